//! Placement benchmark (BENCHMARKS.md): 100,000 tenants onto 1,000 pooled cells in 10 regions,
//! as one pure in-memory decision run; then the share of tenants a rebalance plan would move after
//! adding one cell.
//!
//! Run: `cargo bench -p cellfleet --bench placement`

// A panic in a test or benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use cellfleet::placement::{CellInfo, Fleet, Placed, Policy, RegionInfo, rebalance_plan};
use cellfleet_api::{
    CellKind, CellName, CellState, Env, Location, Profile, RegionName, Residency, TenantId,
};

const REGIONS: [(&str, &str, f64, f64); 10] = [
    ("eu-west-1", "eu", 53.35, -6.26),
    ("eu-west-2", "eu", 51.51, -0.13),
    ("eu-central-1", "eu", 50.11, 8.68),
    ("eu-north-1", "eu", 59.33, 18.07),
    ("us-east-1", "us", 38.90, -77.04),
    ("us-east-2", "us", 39.96, -83.0),
    ("us-west-1", "us", 37.77, -122.42),
    ("us-west-2", "us", 45.52, -122.68),
    ("ap-southeast-1", "ap", 1.35, 103.82),
    ("ap-northeast-1", "ap", 35.68, 139.69),
];
const CELLS_PER_REGION: usize = 100;
const CAPACITY: u32 = 200;
const TENANTS: usize = 100_000;

fn fleet() -> Fleet {
    let mut fleet = Fleet::new(REGIONS.iter().map(|(n, j, lat, lon)| RegionInfo {
        name: RegionName::new(*n).unwrap(),
        jurisdiction: (*j).to_owned(),
        location: Location {
            lat: *lat,
            lon: *lon,
        },
    }));
    for (r, _, _, _) in REGIONS {
        for i in 0..CELLS_PER_REGION {
            fleet.add_cell(cell(&format!("{r}-pool-{i}"), r, CAPACITY));
        }
    }
    fleet
}

fn cell(name: &str, region: &str, capacity: u32) -> CellInfo {
    CellInfo {
        name: CellName::new(name).unwrap(),
        region: RegionName::new(region).unwrap(),
        kind: CellKind::Pooled,
        env: Env::prod(),
        capacity,
        state: CellState::Ready,
        load: 0,
    }
}

/// Tenants spread evenly over preferred regions; half name their jurisdiction, half an explicit
/// list of their preferred region and one neighbour.
fn tenants() -> Vec<(TenantId, Residency)> {
    (0..TENANTS)
        .map(|i| {
            let (region, jurisdiction, _, _) = REGIONS[i % REGIONS.len()];
            let preferred = Some(RegionName::new(region).unwrap());
            let residency = if i % 2 == 0 {
                Residency {
                    allowed_regions: None,
                    jurisdiction: Some(jurisdiction.to_owned()),
                    preferred_region: preferred,
                }
            } else {
                let neighbour = REGIONS[(i + 1) % REGIONS.len()].0;
                Residency {
                    allowed_regions: Some(vec![
                        RegionName::new(region).unwrap(),
                        RegionName::new(neighbour).unwrap(),
                    ]),
                    jurisdiction: None,
                    preferred_region: preferred,
                }
            };
            (TenantId::new(format!("tenant-{i:06}")).unwrap(), residency)
        })
        .collect()
}

fn main() {
    let policy = Policy::default();
    let tenants = tenants();
    let mut timings = Vec::new();
    let mut result = None;
    for _ in 0..5 {
        let mut fleet = fleet();
        let started = Instant::now();
        let mut placed = Vec::with_capacity(TENANTS);
        for (t, residency) in &tenants {
            let d = fleet
                .place(&policy, t, Profile::MtStandard, residency, &Env::prod())
                .expect("the benchmark fleet has room for every tenant");
            fleet.assign(&d.cell);
            placed.push(Placed {
                tenant: t.clone(),
                env: Env::prod(),
                profile: Profile::MtStandard,
                residency: residency.clone(),
                cell: d.cell,
            });
        }
        timings.push(started.elapsed().as_secs_f64());
        result = Some((fleet, placed));
    }
    timings.sort_by(f64::total_cmp);
    let (mut fleet, placed) = result.expect("ran");
    let loads: Vec<u32> = fleet.cells().map(|c| c.load).collect();
    let max = *loads.iter().max().unwrap_or(&0);
    let min = *loads.iter().min().unwrap_or(&0);
    let mean = loads.iter().map(|l| f64::from(*l)).sum::<f64>() / loads.len() as f64;
    assert!(fleet.cells().all(|c| c.load <= c.capacity));

    let before = rebalance_plan(&fleet, &policy, &placed, &[]).len();
    fleet.add_cell(cell("eu-west-1-pool-new", "eu-west-1", CAPACITY));
    let started = Instant::now();
    let plan = rebalance_plan(
        &fleet,
        &policy,
        &placed,
        &[CellName::new("eu-west-1-pool-new").unwrap()],
    );
    let plan_time = started.elapsed().as_secs_f64();
    let onto_new = plan
        .iter()
        .filter(|m| m.to.as_str() == "eu-west-1-pool-new")
        .count();
    let pool_tenants = placed
        .iter()
        .filter(|p| p.cell.as_str().starts_with("eu-west-1-"))
        .count();
    let cross_region = plan
        .iter()
        .filter(|m| {
            !m.to.as_str().starts_with("eu-west-1-") || !m.from.as_str().starts_with("eu-west-1-")
        })
        .count();
    let n = REGIONS.len() * CELLS_PER_REGION;

    println!(
        "placement: {TENANTS} tenants onto {n} cells in {} regions (capacity {CAPACITY}, balance factor {})",
        REGIONS.len(),
        policy.balance_factor
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| total time (median of 5) | {:.3} s (min {:.3}, max {:.3}) | ≤ 0.5 s |",
        timings[2], timings[0], timings[4]
    );
    println!("| max cell load / capacity | {max} / {CAPACITY} (min load {min}) | ≤ capacity |");
    println!(
        "| fleet max / mean load | {max} / {mean:.1} = {:.3} | ≤ 1.10 |",
        f64::from(max) / mean
    );
    println!("| rebalance moves before adding a cell | {before} | — |");
    println!(
        "| rebalance after adding 1 cell to eu-west-1 (100 cells) | {} moves ({onto_new} onto the new cell) = {:.4} of the fleet, {:.4} of the region's pool | fleet ≤ 1.5 × 1/(n+1) = {:.4}; pool ideal 1/101 = {:.4} |",
        plan.len(),
        plan.len() as f64 / TENANTS as f64,
        plan.len() as f64 / pool_tenants as f64,
        1.5 / (n as f64 + 1.0),
        1.0 / (CELLS_PER_REGION as f64 + 1.0)
    );
    println!("| moves not within eu-west-1 | {cross_region} | — |");
    println!("| rebalance plan time (replay of every placement) | {plan_time:.3} s | — |");
}
