//! End-to-end tests of the official `performance` plugin, through `hive`, hive.toml and the real loader.
//!
//! The report file (periodic during a run and final at its end, valid JSON, counts and
//! quantiles that match the tasks' known sleeps, throughput), the same figures in the
//! plugin's status (`hive health --json`) and in the `hive health` table, and config errors
//! naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{official_plugin, scratch, wait_until, Hive};
use serde_json::{json, Value};

/// Writes `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A hive.toml with a process pool `work` of `size` agents of capacity 1 and the
/// performance plugin with `plugin_config` (TOML lines of its `[plugins.config]`).
fn config(dir: &Path, size: u32, plugin_config: &str) -> PathBuf {
    write(
        dir,
        "hive.toml",
        &format!(
            "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"work\"\ndriver = \"process\"\n\
             size = {size}\ncapacity = 1\n\n[[plugins]]\npath = \"{}\"\n[plugins.config]\n{plugin_config}\n",
            official_plugin("performance").display()
        ),
    )
}

/// The report file, if it exists and is JSON.
fn read_report(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{text}")),
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, found {v}"))
}

/// Checks the figures of an entry of `n` attempts of tasks that sleep about `sleep_ms`.
fn assert_figures(e: &Value, n: u64, sleep_ms: f64) {
    assert_eq!(e["attempts"], n, "{e}");
    assert_eq!(e["succeeded"], n, "{e}");
    assert_eq!(e["failed"], 0, "{e}");
    let lat = &e["latency_ms"];
    assert_eq!(lat["count"], n, "{e}");
    let p50 = f(&lat["p50"]);
    assert!(
        (sleep_ms * 0.9..sleep_ms * 5.0 + 500.0).contains(&p50),
        "latency p50 {p50} ms is nowhere near the {sleep_ms} ms sleep: {e}"
    );
    assert!(
        f(&lat["p50"]) <= f(&lat["p95"])
            && f(&lat["p95"]) <= f(&lat["p99"])
            && f(&lat["p99"]) <= f(&lat["max"]),
        "{e}"
    );
    assert!(f(&lat["mean"]) >= sleep_ms * 0.9, "{e}");
    let wait = &e["queue_wait_ms"];
    assert_eq!(wait["count"], n, "{e}");
    assert!(f(&wait["max"]) >= f(&wait["p50"]), "{e}");
    let t = &e["throughput_per_s"];
    assert!(f(&t["overall"]) > 0.0, "{e}");
    for w in ["1s", "10s", "60s"] {
        assert!(f(&t[w]) >= 0.0, "{e}");
    }
}

#[test]
fn a_run_writes_periodic_and_final_reports_with_the_figures() {
    let dir = scratch("performance-report");
    let report = dir.join("out").join("perf.json");
    // Relative to the current directory of `hive` (the scratch directory).
    let cfg = config(
        &dir,
        2,
        "report_path = \"out/perf.json\"\nreport_interval_ms = 100\n",
    );
    let release = dir.join("release");
    let mut tasks: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("t{i}"), "role": "work", "command": "sleep 0.2"}))
        .collect();
    // Keeps the run going until the test has seen a periodic report.
    tasks.push(json!({
        "id": "hold",
        "command": format!(
            "for i in $(seq 1 250); do [ -f '{}' ] && exit 0; sleep 0.1; done; exit 1",
            release.display()
        ),
    }));
    let mut hive = Hive::new(&dir)
        .args(["run", "--json", "--max-concurrency", "10", "--config"])
        .args([&cfg])
        .args(["--tasks", &Value::Array(tasks).to_string()])
        .spawn();
    let periodic_done = wait_until(Duration::from_secs(20), || {
        read_report(&report).is_some_and(|r| r["roles"]["work"]["attempts"] == 8)
    });
    assert!(
        periodic_done,
        "no periodic report with the 8 attempts; last report: {:?}\nstderr:\n{}",
        read_report(&report),
        hive.stderr()
    );
    assert!(
        hive.wait(Duration::from_millis(1)).is_none(),
        "the report came while the run was still going"
    );
    let periodic = read_report(&report).expect("report");
    std::fs::write(&release, "").expect("release the run");
    let run = hive
        .wait(Duration::from_secs(20))
        .expect("the run ends once released");
    assert_eq!(run.code, 0, "{run}");

    let last = read_report(&report).expect("the final report");
    assert_eq!(last["schema"], "hive-performance/1", "{last}");
    assert!(
        last["generated_at"]
            .as_str()
            .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T'),
        "{last}"
    );
    assert!(
        last["generated_at"].as_str() > periodic["generated_at"].as_str(),
        "the final report is written at the end"
    );
    assert!(f(&last["uptime_s"]) > f(&periodic["uptime_s"]), "{last}");
    assert_eq!(last["windows_s"], json!([1, 10, 60]));
    assert_figures(&last["roles"]["work"], 8, 200.0);
    assert_eq!(last["roles"]["local"]["attempts"], 1, "{last}");
    assert_eq!(last["all"]["attempts"], 9, "{last}");
    // Per agent: the two `work` agents share the eight attempts.
    let agents = last["agents"].as_object().expect("agents");
    let work: Vec<&Value> = agents.values().filter(|a| a["role"] == "work").collect();
    assert_eq!(work.len(), 2, "{last}");
    assert_eq!(
        work.iter()
            .map(|a| a["attempts"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        8
    );
    // Two agents of capacity 1 for eight 200 ms tasks: some tasks waited for a slot.
    assert!(
        f(&last["roles"]["work"]["queue_wait_ms"]["max"]) >= 150.0,
        "{last}"
    );
    // Nothing but the report in its directory: the temporary file was renamed.
    let files: Vec<_> = std::fs::read_dir(dir.join("out"))
        .expect("ls out")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(files, ["perf.json"], "{files:?}");
}

#[test]
fn status_and_hive_health_show_the_figures() {
    let dir = scratch("performance-health");
    // The benchmark runs six 100 ms tasks on the served pool as soon as it has an agent.
    let cfg = config(
        &dir,
        2,
        "report_interval_ms = 100\n[plugins.config.benchmark]\nrole = \"work\"\ntasks = 6\n\
         payload = { command = \"sleep 0.1\" }\n",
    );
    let mut agents = Hive::new(&dir)
        .args(["agents", "--config"])
        .args([&cfg])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(15), || agents
            .stderr()
            .contains("hive agents:")),
        "not ready:\n{}",
        agents.stderr()
    );
    let status = || -> Value {
        let h = Hive::new(&dir)
            .args(["health", "--json", "--config"])
            .args([&cfg])
            .run();
        assert_eq!(h.code, 0, "{h}");
        let v = h.json();
        v["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "performance"))
            .map(|p| p["status"].clone())
            .unwrap_or_else(|| panic!("no performance plugin in health: {v}"))
    };
    assert!(
        wait_until(Duration::from_secs(20), || status()["benchmark"]
            ["completed"]
            == 6),
        "the benchmark did not complete: {}",
        status()
    );
    let s = status();
    assert_eq!(s["schema"], "hive-performance/1", "{s}");
    assert_figures(&s["roles"]["work"], 6, 100.0);
    let b = &s["benchmark"];
    assert_eq!(
        (b["submitted"].clone(), b["succeeded"].clone()),
        (json!(6), json!(6))
    );
    assert!(f(&b["throughput_per_s"]) > 0.0, "{b}");

    // The same figures in the human report.
    let text = Hive::new(&dir)
        .args(["health", "--config"])
        .args([&cfg])
        .run();
    assert_eq!(text.code, 0, "{text}");
    assert!(
        text.stdout.contains("performance (plugin performance)"),
        "{text}"
    );
    let header = text
        .stdout
        .lines()
        .find(|l| l.starts_with("ROLE") && l.contains("LAT-P50"))
        .unwrap_or_else(|| panic!("no performance table:\n{text}"));
    for col in [
        "ATTEMPTS", "LAT-P95", "LAT-P99", "LAT-MAX", "WAIT-P95", "TPUT-10s", "TPUT-ALL",
    ] {
        assert!(header.contains(col), "{col} missing in {header}");
    }
    let row: Vec<&str> = text
        .stdout
        .lines()
        .skip_while(|l| *l != header)
        .find(|l| l.starts_with("work "))
        .unwrap_or_else(|| panic!("no row for work:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "6", "{row:?}");
    let p50 = format!("{:.1}", f(&status()["roles"]["work"]["latency_ms"]["p50"]));
    assert_eq!(row[2], p50, "the table shows the status' p50: {row:?}");

    agents.signal(libc::SIGINT);
    let done = agents
        .wait(Duration::from_secs(10))
        .expect("hive agents exits");
    assert_eq!(done.code, 0, "{done}");
}

#[test]
fn a_bad_config_stops_hive_with_exit_2_naming_the_key() {
    let dir = scratch("performance-bad-config");
    for (i, (plugin_config, key)) in [
        ("report_interval_ms = 0\n", "report_interval_ms"),
        ("bogus_key = 1\n", "bogus_key"),
        ("windows_s = []\n", "windows_s"),
        ("[plugins.config.benchmark]\ntasks = 3\n", "benchmark"),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = dir.join(format!("case-{i}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let cfg = config(&sub, 1, plugin_config);
        let marker = sub.join("ran");
        let run = Hive::new(&sub)
            .args(["run", "--config"])
            .args([&cfg])
            .args([
                "--tasks",
                &json!([{"command": "touch", "args": [marker]}]).to_string(),
            ])
            .run();
        assert_eq!(run.code, 2, "{run}");
        assert!(
            run.stderr.contains("`performance` refused its config") && run.stderr.contains(key),
            "stderr names `{key}`:\n{run}"
        );
        assert!(!marker.exists(), "no task runs with a refused config");
    }
}
