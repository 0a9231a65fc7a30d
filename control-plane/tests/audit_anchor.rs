//! The audit chain against someone who can write the registry database, through the real
//! binary on both backends: a *consistent* rewrite (a record edited and every later hash and the
//! head recomputed, so the chain alone verifies) is caught by the signed checkpoints, and the
//! first record after the last checkpoint that still matches is named; deleting the checkpoints
//! from the database as well is caught by the copies kept outside it (the server's checkpoint log,
//! or a copy handed to `audit verify --checkpoints`).

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use cellfleet::audit::{StoredRecord, record_hash};
use cellfleet_e2e::{Db, ServerProcess, TestDb, cli};
use sqlx::{Executor, Row};

const FLEET: &str = "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}\n---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: cell-a}\nspec: {region: eu-west-1, kind: pooled, env: prod}\n";

fn tenant(name: &str) -> String {
    format!(
        "apiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec: {{displayName: {name}, profile: mt-standard, residency: {{jurisdiction: eu}}}}\n"
    )
}

/// Rewrites record `seq` and every later one so that the chain and its head verify again.
async fn rewrite_consistently(conn: &mut sqlx::AnyConnection, seq: i64) {
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, target, correlation_id, payload, prev_hash, hash \
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut records: Vec<StoredRecord> = rows
        .iter()
        .map(|r| StoredRecord {
            seq: r.get("seq"),
            at_ms: r.get("at"),
            actor: r.get("actor"),
            action: r.get("action"),
            target: r.get("target"),
            correlation_id: r.get("correlation_id"),
            payload: r.get("payload"),
            prev_hash: r.get("prev_hash"),
            hash: r.get("hash"),
        })
        .collect();
    let i = records.iter().position(|r| r.seq == seq).unwrap();
    records[i].actor = "token:tok_innocent (admin)".into();
    for j in i..records.len() {
        if j > 0 {
            records[j].prev_hash = records[j - 1].hash.clone();
        }
        records[j].hash = record_hash(&records[j]);
        conn.execute(
            sqlx::query(
                "UPDATE audit_log SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
            )
            .bind(records[j].actor.clone())
            .bind(records[j].prev_hash.clone())
            .bind(records[j].hash.clone())
            .bind(records[j].seq),
        )
        .await
        .unwrap();
    }
    let last = records.last().unwrap();
    conn.execute(
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(last.seq)
            .bind(last.hash.clone()),
    )
    .await
    .unwrap();
}

async fn the_signed_checkpoints_catch_what_the_chain_cannot(db: Db) {
    let registry = TestDb::new(db).await;
    let dir = registry.dir.path();
    let key = dir.join("keys/audit.key");
    let log = dir.join("elsewhere/checkpoints.jsonl");
    let (server, admin) = ServerProcess::serve(
        &registry,
        &[
            "--audit-key-file",
            key.to_str().unwrap(),
            "--audit-checkpoint-log",
            log.to_str().unwrap(),
            "--audit-checkpoint-interval",
            "1h",
        ],
    );
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains(&format!("audit key created at {}", key.display()))),
        "{:?}",
        server.banner
    );
    let url = server.url.clone();
    let run = |args: &[&str]| cli(&url, &admin, args);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    // Records 1…k, a checkpoint; more records, another checkpoint.
    run(&["apply", "-f", &write("fleet.yaml", FLEET)]).ok();
    let first = run(&["audit", "checkpoint", "-o", "json"]).json();
    let first_seq = first["seq"].as_i64().unwrap();
    for t in ["acme", "globex", "initech"] {
        run(&["apply", "-f", &write(&format!("{t}.yaml"), &tenant(t))]).ok();
    }
    let second = run(&["audit", "checkpoint", "-o", "json"]).json();
    let second_seq = second["seq"].as_i64().unwrap();
    assert!(second_seq > first_seq + 2);
    // Nothing new: no new checkpoint.
    assert_eq!(
        run(&["audit", "checkpoint", "-o", "json"]).json(),
        serde_json::Value::Null
    );
    let verified = run(&["audit", "verify", "-o", "json"]).json();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["anchoredThrough"], second_seq);
    assert_eq!(verified["unanchored"], 0);
    // The copy outside the database has both; so does the registry.
    // (The server also checkpointed at start: the bootstrap token's record.)
    let logged = std::fs::read_to_string(&log).unwrap();
    let copy = run(&["audit", "checkpoints", "-o", "json"]);
    let stored = copy.json().as_array().unwrap().len();
    assert!(stored >= 2);
    assert_eq!(logged.lines().count(), stored, "{logged}");
    let copy_file = write("copy.json", copy.ok());
    // The public key is published; its id is the checkpoints'.
    let key_view = run(&["audit", "key", "-o", "json"]).json();
    assert_eq!(key_view["keyId"], first["keyId"]);
    assert!(
        key_view["publicKeyPem"]
            .as_str()
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );

    // An attacker with write access to the database rewrites a record after the first
    // checkpoint, consistently. The chain alone would verify; the second checkpoint does not.
    let mut conn = registry.raw().await;
    let target = first_seq + 2;
    rewrite_consistently(&mut conn, target).await;
    let tampered = run(&["audit", "verify"]);
    assert_eq!(tampered.code, 1, "{}", tampered.stdout);
    assert!(
        tampered.stdout.contains(&format!(
            "audit log TAMPERED at record {}: records {}–{second_seq} were rewritten",
            first_seq + 1,
            first_seq + 1
        )),
        "{}",
        tampered.stdout
    );
    assert!(
        tampered
            .stdout
            .contains(&format!("record {first_seq} still matches its checkpoint")),
        "{}",
        tampered.stdout
    );

    // They delete the checkpoints too: the server's own copy outside the database names it …
    conn.execute("DELETE FROM audit_checkpoints").await.unwrap();
    let tampered = run(&["audit", "verify", "-o", "json"]).json();
    assert_eq!(tampered["ok"], false);
    let problems = tampered["problems"].to_string();
    assert!(problems.contains("checkpoints were deleted"), "{problems}");
    assert!(problems.contains("were rewritten"), "{problems}");

    // … and with that copy gone as well, a copy kept anywhere else still does.
    std::fs::remove_file(&log).unwrap();
    let blind = run(&["audit", "verify", "-o", "json"]).json();
    assert_eq!(blind["ok"], true, "nothing left to compare with: {blind}");
    let with_copy = run(&["audit", "verify", "--checkpoints", &copy_file]);
    assert_eq!(with_copy.code, 1, "{}", with_copy.stdout);
    assert!(
        with_copy
            .stdout
            .contains(&format!("audit log TAMPERED at record {}", first_seq + 1)),
        "{}",
        with_copy.stdout
    );
    // A damaged copy is an error, not a silent pass.
    let junk = write("junk.jsonl", "{\"seq\": 1}\n");
    let out = run(&["audit", "verify", "--checkpoints", &junk]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("line 1: not a checkpoint"),
        "{}",
        out.stderr
    );
    drop(conn);
    server.stop();
}

/// Stopping the server checkpoints what the run wrote last.
async fn a_stop_checkpoints_the_last_records(db: Db) {
    let registry = TestDb::new(db).await;
    let dir = registry.dir.path();
    let key = dir.join("audit.key");
    let log = dir.join("log.jsonl");
    let args = [
        "--audit-key-file",
        key.to_str().unwrap(),
        "--audit-checkpoint-log",
        log.to_str().unwrap(),
    ];
    let (server, admin) = ServerProcess::serve(&registry, &args);
    let fleet = dir.join("fleet.yaml");
    std::fs::write(&fleet, FLEET).unwrap();
    cli(
        &server.url,
        &admin,
        &["apply", "-f", fleet.to_str().unwrap()],
    )
    .ok();
    server.stop();
    let (server, _) = ServerProcess::serve(&registry, &args);
    let v = cli(&server.url, &admin, &["audit", "verify", "-o", "json"]).json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["unanchored"], 0, "the stop anchored every record: {v}");
    assert!(
        !server
            .banner
            .iter()
            .any(|l| l.contains("audit key created"))
    );
    assert!(Path::new(&key).exists());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_catch_a_consistent_rewrite_on_sqlite() {
    the_signed_checkpoints_catch_what_the_chain_cannot(Db::Sqlite).await;
    a_stop_checkpoints_the_last_records(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_catch_a_consistent_rewrite_on_postgres() {
    the_signed_checkpoints_catch_what_the_chain_cannot(Db::Postgres).await;
    a_stop_checkpoints_the_last_records(Db::Postgres).await;
}
