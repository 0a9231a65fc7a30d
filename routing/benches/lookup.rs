//! In-process lookup benchmark (BENCHMARKS.md): `RoutingTable::lookup` against a plain
//! `HashMap<String, Route>::get` on the same 100,000 tenants, measured side by side in one run,
//! and the allocations made by lookups (counted by an instrumented global allocator).
//!
//! Run: `cargo bench -p cellfleet-routing --bench lookup`

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use cellfleet_api::{Generation, RouteEntry, RouteState, RoutesSnapshot};
use cellfleet_routing::{Route, RoutingTable};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TENANTS: usize = 100_000;
const LOOKUPS: usize = 2_000_000;

fn main() {
    let entries: Vec<RouteEntry> = (0..TENANTS)
        .map(|i| RouteEntry {
            tenant: format!("tenant-{i:06}").parse().expect("tenant id"),
            env: "prod".parse().expect("env"),
            cell: format!("cell-{}", i % 1000).parse().expect("cell"),
            endpoint: Some(format!("http://10.0.{}.{}:8080", i / 250 % 250, i % 250)),
            state: RouteState::Active,
            generation: Generation(1),
            requests_per_second: Some(100),
            version: 1,
        })
        .collect();
    let table = RoutingTable::from_snapshot(&RoutesSnapshot {
        epoch: String::new(),
        version: 1,
        entries: entries.clone(),
    })
    .expect("table");
    let plain: HashMap<String, Route> = entries
        .iter()
        .map(|e| (e.tenant.to_string(), Route::from(e)))
        .collect();
    // A pseudo-random order of existing keys, so lookups are not cache-friendly by accident.
    let keys: Vec<String> = (0..LOOKUPS)
        .map(|i| format!("tenant-{:06}", (i * 7919) % TENANTS))
        .collect();

    let mut ours = Vec::new();
    let mut reference = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let mut found = 0usize;
        for k in &keys {
            found += usize::from(black_box(table.lookup(black_box(k), "prod")).is_some());
        }
        ours.push(started.elapsed().as_nanos() as f64 / LOOKUPS as f64);
        assert_eq!(found, LOOKUPS);

        let started = Instant::now();
        let mut found = 0usize;
        for k in &keys {
            found += usize::from(black_box(plain.get(black_box(k.as_str()))).is_some());
        }
        reference.push(started.elapsed().as_nanos() as f64 / LOOKUPS as f64);
        assert_eq!(found, LOOKUPS);
    }
    ours.sort_by(f64::total_cmp);
    reference.sort_by(f64::total_cmp);

    let region = Region::new(GLOBAL);
    for k in keys.iter().take(100_000) {
        black_box(table.lookup(black_box(k), "prod"));
    }
    let allocations = region.change().allocations;

    let (o, r) = (ours[3], reference[3]);
    println!("lookup: {TENANTS} tenants, {LOOKUPS} lookups per run, median of 7 runs");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| `RoutingTable::lookup` | {o:.1} ns | ≤ 100 ns |");
    println!("| `HashMap<String, Route>::get` (reference, same run) | {r:.1} ns | — |");
    println!("| ratio | {:.2}× | ≤ 2× |", o / r);
    println!("| allocations in 100,000 lookups | {allocations} | 0 |");
}
