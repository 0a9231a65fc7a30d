//! Unit and property tests of the placement rules.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn region(name: &str, jurisdiction: &str, lat: f64, lon: f64) -> RegionInfo {
    RegionInfo {
        name: RegionName::new(name).unwrap(),
        jurisdiction: jurisdiction.to_owned(),
        location: Location { lat, lon },
    }
}

fn cell(name: &str, region: &str, kind: CellKind, capacity: u32) -> CellInfo {
    CellInfo {
        name: CellName::new(name).unwrap(),
        region: RegionName::new(region).unwrap(),
        kind,
        env: Env::prod(),
        capacity,
        state: CellState::Ready,
        load: 0,
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn rn(s: &str) -> RegionName {
    RegionName::new(s).unwrap()
}

fn europe() -> Fleet {
    let mut fleet = Fleet::new([
        region("eu-west-1", "eu", 53.35, -6.26),   // Dublin
        region("eu-central-1", "eu", 50.11, 8.68), // Frankfurt
        region("eu-north-1", "eu", 59.33, 18.07),  // Stockholm
        region("us-east-1", "us", 38.9, -77.0),    // Virginia
    ]);
    for (c, r) in [
        ("euw1-pool-1", "eu-west-1"),
        ("euw1-pool-2", "eu-west-1"),
        ("euc1-pool-1", "eu-central-1"),
        ("eun1-pool-1", "eu-north-1"),
        ("use1-pool-1", "us-east-1"),
    ] {
        fleet.add_cell(cell(c, r, CellKind::Pooled, 2));
    }
    fleet
}

fn jurisdiction(j: &str, preferred: Option<&str>) -> Residency {
    Residency {
        allowed_regions: None,
        jurisdiction: Some(j.to_owned()),
        preferred_region: preferred.map(rn),
    }
}

fn place_and_assign(fleet: &mut Fleet, t: &str, residency: &Residency) -> Result<Decision, NoRoom> {
    let d = fleet.place(
        &Policy::default(),
        &tid(t),
        Profile::MtStandard,
        residency,
        &Env::prod(),
    )?;
    fleet.assign(&d.cell);
    Ok(d)
}

#[test]
fn preferred_region_first_then_by_distance() {
    let fleet = europe();
    let c = fleet.candidate_regions(&jurisdiction("eu", Some("eu-west-1")));
    let names: Vec<&str> = c.regions.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names, ["eu-west-1", "eu-central-1", "eu-north-1"]);
    // Dublin–Frankfurt is about 1,090 km.
    let d = c.regions[1].1.unwrap();
    assert!((1050.0..1130.0).contains(&d), "{d}");
}

#[test]
fn disallowed_preferred_region_orders_by_distance_from_it() {
    let fleet = europe();
    let residency = Residency {
        allowed_regions: Some(vec![rn("eu-north-1"), rn("eu-central-1")]),
        jurisdiction: None,
        preferred_region: Some(rn("eu-west-1")),
    };
    let c = fleet.candidate_regions(&residency);
    let names: Vec<&str> = c.regions.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(names, ["eu-central-1", "eu-north-1"]);
}

#[test]
fn falls_back_in_distance_order_when_full_then_reports_no_room() {
    let mut fleet = europe();
    let eu = jurisdiction("eu", Some("eu-west-1"));
    let mut regions = Vec::new();
    for i in 0..8 {
        regions.push(
            place_and_assign(&mut fleet, &format!("t{i}"), &eu)
                .unwrap()
                .region,
        );
    }
    let order: Vec<&str> = regions.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        order,
        [
            "eu-west-1",
            "eu-west-1",
            "eu-west-1",
            "eu-west-1",
            "eu-central-1",
            "eu-central-1",
            "eu-north-1",
            "eu-north-1"
        ]
    );
    let err = place_and_assign(&mut fleet, "t9", &eu).unwrap_err();
    assert!(err.0.contains("no pooled cell with room"), "{err}");
    assert!(
        err.0
            .contains("eu-north-1: every ready pooled cell for env prod is full"),
        "{err}"
    );
    // The US cell has room but is never used for an EU tenant.
    assert_eq!(
        fleet
            .cell(&CellName::new("use1-pool-1").unwrap())
            .unwrap()
            .load,
        0
    );
}

#[test]
fn residency_without_any_region_says_so() {
    let fleet = europe();
    let err = fleet
        .place(
            &Policy::default(),
            &tid("a"),
            Profile::MtStandard,
            &jurisdiction("apac", None),
            &Env::prod(),
        )
        .unwrap_err();
    assert_eq!(err.0, "no region satisfies residency (jurisdiction apac)");
}

#[test]
fn only_ready_cells_of_the_env_are_used() {
    let mut fleet = Fleet::new([region("eu-west-1", "eu", 53.35, -6.26)]);
    let mut draining = cell("a", "eu-west-1", CellKind::Pooled, 10);
    draining.state = CellState::Draining;
    fleet.add_cell(draining);
    let mut staging = cell("b", "eu-west-1", CellKind::Pooled, 10);
    staging.env = Env::new("staging").unwrap();
    fleet.add_cell(staging);
    let err = fleet
        .place(
            &Policy::default(),
            &tid("t"),
            Profile::MtStandard,
            &jurisdiction("eu", None),
            &Env::prod(),
        )
        .unwrap_err();
    assert!(err.0.contains("no ready pooled cell for env prod"), "{err}");
    let d = fleet
        .place(
            &Policy::default(),
            &tid("t"),
            Profile::MtStandard,
            &jurisdiction("eu", None),
            &Env::new("staging").unwrap(),
        )
        .unwrap();
    assert_eq!(d.cell.as_str(), "b");
}

#[test]
fn dedicated_profiles_take_a_free_dedicated_cell() {
    let mut fleet = europe();
    fleet.add_cell(cell("euw1-ded-1", "eu-west-1", CellKind::Dedicated, 1));
    let eu = jurisdiction("eu", Some("eu-west-1"));
    let d = fleet
        .place(
            &Policy::default(),
            &tid("big"),
            Profile::StDedicated,
            &eu,
            &Env::prod(),
        )
        .unwrap();
    assert_eq!(d.cell.as_str(), "euw1-ded-1");
    fleet.assign(&d.cell);
    let err = fleet
        .place(
            &Policy::default(),
            &tid("big2"),
            Profile::StByoc,
            &eu,
            &Env::prod(),
        )
        .unwrap_err();
    assert!(
        err.0
            .contains("every ready dedicated cell for env prod is taken"),
        "{err}"
    );
}

#[test]
fn explanation_matches_the_decision() {
    let mut fleet = europe();
    let eu = jurisdiction("eu", Some("eu-central-1"));
    for i in 0..3 {
        let t = tid(&format!("t{i}"));
        let d = fleet.place(
            &Policy::default(),
            &t,
            Profile::MtStandard,
            &eu,
            &Env::prod(),
        );
        let e = fleet.explain(
            &Policy::default(),
            &t,
            Profile::MtStandard,
            &eu,
            &Env::prod(),
        );
        match d {
            Ok(d) => {
                assert_eq!(e.chosen_cell.as_ref(), Some(&d.cell));
                assert_eq!(e.chosen_region.as_ref(), Some(&d.region));
                assert!(
                    e.cells
                        .iter()
                        .any(|c| c.outcome == "chosen" && c.cell == d.cell)
                );
                fleet.assign(&d.cell);
            }
            Err(NoRoom(reason)) => {
                assert_eq!(e.chosen_cell, None);
                assert_eq!(e.summary, reason);
            }
        }
    }
    let e = fleet.explain(
        &Policy::default(),
        &tid("t9"),
        Profile::MtStandard,
        &eu,
        &Env::prod(),
    );
    assert_eq!(e.regions[0].region.as_str(), "eu-central-1");
    assert_eq!(
        e.regions[0].outcome,
        "every ready pooled cell for env prod is full"
    );
    assert_eq!(e.regions[1].outcome, "chosen");
    assert!(
        e.summary.contains("closest allowed region with room"),
        "{}",
        e.summary
    );
}

#[test]
fn adding_a_cell_to_a_balanced_pool_plans_about_one_over_n_plus_one_moves() {
    let mut fleet = Fleet::new([region("eu-west-1", "eu", 53.35, -6.26)]);
    for i in 0..9 {
        fleet.add_cell(cell(&format!("c{i}"), "eu-west-1", CellKind::Pooled, 1000));
    }
    let eu = jurisdiction("eu", None);
    let mut placed = Vec::new();
    for i in 0..3000 {
        let d = place_and_assign(&mut fleet, &format!("t{i}"), &eu).unwrap();
        placed.push(Placed {
            tenant: tid(&format!("t{i}")),
            env: Env::prod(),
            profile: Profile::MtStandard,
            residency: eu.clone(),
            cell: d.cell,
        });
    }
    assert!(
        rebalance_plan(&fleet, &Policy::default(), &placed, &[]).is_empty(),
        "an unchanged fleet replays to itself"
    );
    fleet.add_cell(cell("c9", "eu-west-1", CellKind::Pooled, 1000));
    let moves = rebalance_plan(
        &fleet,
        &Policy::default(),
        &placed,
        &[CellName::new("c9").unwrap()],
    );
    let onto_new = moves.iter().filter(|m| m.to.as_str() == "c9").count();
    // The new cell's share is 3000 / 10 = 300; the bounded-load cascade adds a little.
    assert!(
        (250..=350).contains(&onto_new),
        "{onto_new} onto the new cell"
    );
    assert!(
        moves.len() <= 450,
        "at most 1.5 × 1/(n+1) of the tenants move: {}",
        moves.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

const JURISDICTIONS: [&str; 3] = ["eu", "us", "ap"];

#[derive(Debug, Clone)]
struct World {
    regions: Vec<RegionInfo>,
    cells: Vec<CellInfo>,
    tenants: Vec<(TenantId, Profile, Residency)>,
}

fn world() -> impl Strategy<Value = World> {
    let regions = prop::collection::vec((0..3usize, -60.0..60.0f64, -170.0..170.0f64), 1..6);
    regions.prop_flat_map(|rs| {
        let regions: Vec<RegionInfo> = rs
            .iter()
            .enumerate()
            .map(|(i, (j, lat, lon))| region(&format!("r{i}"), JURISDICTIONS[*j], *lat, *lon))
            .collect();
        let n = regions.len();
        let cells = prop::collection::vec(
            (0..n, any::<bool>(), 1..8u32, prop::bool::weighted(0.9)),
            0..12,
        );
        let residency = prop_oneof![
            (0..3usize, prop::option::of(0..n)).prop_map(move |(j, p)| Residency {
                allowed_regions: None,
                jurisdiction: Some(JURISDICTIONS[j].to_owned()),
                preferred_region: p.map(|p| rn(&format!("r{p}"))),
            }),
            (prop::collection::vec(0..n, 1..3), prop::option::of(0..n)).prop_map(|(a, p)| {
                Residency {
                    allowed_regions: Some(a.into_iter().map(|a| rn(&format!("r{a}"))).collect()),
                    jurisdiction: None,
                    preferred_region: p.map(|p| rn(&format!("r{p}"))),
                }
            }),
        ];
        let profile = prop_oneof![
            6 => Just(Profile::MtStandard),
            1 => Just(Profile::StDedicated),
            1 => Just(Profile::StByoc),
        ];
        let tenants = prop::collection::vec((profile, residency), 0..60);
        (Just(regions), cells, tenants).prop_map(|(regions, cells, tenants)| World {
            cells: cells
                .into_iter()
                .enumerate()
                .map(|(i, (r, pooled, cap, ready))| {
                    let mut c = cell(
                        &format!("c{i}"),
                        &format!("r{r}"),
                        if pooled {
                            CellKind::Pooled
                        } else {
                            CellKind::Dedicated
                        },
                        cap,
                    );
                    if !ready {
                        c.state = CellState::Provisioning;
                    }
                    c
                })
                .collect(),
            regions,
            tenants: tenants
                .into_iter()
                .enumerate()
                .map(|(i, (p, r))| (tid(&format!("t{i}")), p, r))
                .collect(),
        })
    })
}

fn fleet_of(w: &World) -> Fleet {
    let mut fleet = Fleet::new(w.regions.clone());
    for c in &w.cells {
        fleet.add_cell(c.clone());
    }
    fleet
}

/// Places every tenant in order; returns the decisions (None = no room).
fn place_all(fleet: &mut Fleet, w: &World) -> Vec<Option<Decision>> {
    w.tenants
        .iter()
        .map(|(t, p, r)| {
            let d = fleet.place(&Policy::default(), t, *p, r, &Env::prod()).ok();
            if let Some(d) = &d {
                fleet.assign(&d.cell);
            }
            d
        })
        .collect()
}

/// The regions a residency rule allows, computed independently of the placement code.
fn allowed(w: &World, r: &Residency) -> Vec<RegionName> {
    w.regions
        .iter()
        .filter(|reg| {
            r.allowed_regions
                .as_ref()
                .is_none_or(|a| a.contains(&reg.name))
        })
        .filter(|reg| {
            r.jurisdiction
                .as_ref()
                .is_none_or(|j| &reg.jurisdiction == j)
        })
        .filter(|_| r.allowed_regions.is_some() || r.jurisdiction.is_some())
        .map(|reg| reg.name.clone())
        .collect()
}

proptest! {
    #[test]
    fn residency_is_never_violated(w in world()) {
        let mut fleet = fleet_of(&w);
        for ((_, profile, residency), d) in w.tenants.iter().zip(place_all(&mut fleet, &w)) {
            if let Some(d) = d {
                let cell = fleet.cell(&d.cell).unwrap();
                prop_assert!(allowed(&w, residency).contains(&cell.region));
                prop_assert_eq!(&cell.region, &d.region);
                prop_assert_eq!(cell.kind, profile.cell_kind());
                prop_assert_eq!(cell.state, CellState::Ready);
            }
        }
    }

    #[test]
    fn capacity_is_never_exceeded(w in world()) {
        let mut fleet = fleet_of(&w);
        place_all(&mut fleet, &w);
        for c in fleet.cells() {
            let limit = if c.kind == CellKind::Dedicated { 1 } else { c.capacity };
            prop_assert!(c.load <= limit, "{} has {} > {}", c.name, c.load, limit);
        }
    }

    #[test]
    fn same_input_gives_the_same_placement(w in world()) {
        let a = place_all(&mut fleet_of(&w), &w);
        // Cells registered in another order: the same decisions.
        let mut reversed = w.clone();
        reversed.cells.reverse();
        let b = place_all(&mut fleet_of(&reversed), &w);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_tenant_is_refused_only_when_no_allowed_cell_has_room(w in world()) {
        let mut fleet = fleet_of(&w);
        for (t, p, r) in &w.tenants {
            match fleet.place(&Policy::default(), t, *p, r, &Env::prod()) {
                Ok(d) => fleet.assign(&d.cell),
                Err(_) => {
                    let allowed = allowed(&w, r);
                    let room = fleet.cells().any(|c| {
                        allowed.contains(&c.region)
                            && c.kind == p.cell_kind()
                            && c.state == CellState::Ready
                            && c.load < if c.kind == CellKind::Dedicated { 1 } else { c.capacity }
                    });
                    // Bounded loads may skip a cell, but never every cell with room.
                    prop_assert!(!room, "{t} refused although an allowed cell has room");
                }
            }
        }
    }

    #[test]
    fn adding_a_cell_moves_no_placed_tenant_and_plans_moves_only_onto_it(w in world(), at in 0..5usize) {
        let mut fleet = fleet_of(&w);
        let decisions = place_all(&mut fleet, &w);
        let before: BTreeMap<TenantId, CellName> = w.tenants.iter().zip(&decisions)
            .filter_map(|((t, _, _), d)| d.as_ref().map(|d| (t.clone(), d.cell.clone())))
            .collect();
        // In placement order, as the registry keeps them.
        let placed: Vec<Placed> = w.tenants.iter().zip(&decisions)
            .filter_map(|((t, p, r), d)| d.as_ref().map(|d| Placed {
                tenant: t.clone(), env: Env::prod(), profile: *p, residency: r.clone(), cell: d.cell.clone(),
            }))
            .collect();
        prop_assert!(rebalance_plan(&fleet, &Policy::default(), &placed, &[]).is_empty(), "replaying an unchanged fleet moves nothing");
        let region = w.regions[at % w.regions.len()].name.clone();
        fleet.add_cell(cell("new", region.as_str(), CellKind::Pooled, 8));
        let plan = rebalance_plan(&fleet, &Policy::default(), &placed, &[CellName::new("new").unwrap()]);
        let mut after: BTreeMap<TenantId, CellName> = before.clone();
        for m in &plan {
            let p = placed.iter().find(|p| p.tenant == m.tenant).unwrap();
            let to = fleet.cell(&m.to).unwrap();
            prop_assert!(allowed(&w, &p.residency).contains(&to.region), "a rebalance keeps residency");
            prop_assert_eq!(to.kind, p.profile.cell_kind());
            after.insert(m.tenant.clone(), m.to.clone());
        }
        for c in fleet.cells() {
            let load = after.values().filter(|v| **v == c.name).count() as u32;
            let limit = if c.kind == CellKind::Dedicated { 1 } else { c.capacity };
            prop_assert!(load <= limit, "the plan overfills {}", c.name);
        }
    }
}
