//! The four official plugins loaded together, in either order, on one plan, through `hive`,
//! hive.toml and the real loader: the run completes and each plugin's `status()` (reported
//! in the event log when the kernel shuts down) reflects it.

use std::collections::BTreeMap;
use std::path::Path;

use hive_tests::{official_plugin, scratch, test_agent, Hive};
use serde_json::{json, Value};

const PLUGINS: [&str; 4] = ["production", "performance", "automation", "development"];

/// The `[[plugins]]` entry of one official plugin, with a config that makes it do its job.
fn entry(name: &str, dir: &Path) -> String {
    let config = match name {
        "production" => "[plugins.config]\nwindow_s = 60\n[plugins.config.roles.py]\np95_latency_ms = 5000\np95_queue_wait_ms = 5000\nmin_agents = 2\nmax_agents = 3\n".to_string(),
        "performance" => format!(
            "[plugins.config]\nreport_path = \"{}\"\nreport_interval_ms = 100\n",
            dir.join("perf.json").display()
        ),
        "automation" => "[[plugins.config.rules]]\npattern = \"fail_once\"\naction = \"retry_after\"\nms = 10\n".to_string(),
        _ => format!(
            "[plugins.config.trace]\nenabled = true\npath = \"{}\"\n",
            dir.join("trace.jsonl").display()
        ),
    };
    format!(
        "[[plugins]]\npath = \"{}\"\n{config}",
        official_plugin(name).display()
    )
}

/// Runs the plan with the plugins in `order`; returns each plugin's final status.
fn run_with(order: &[&str], tag: &str) -> BTreeMap<String, Value> {
    let dir = scratch(&format!("official-{tag}"));
    let mut cfg = format!(
        "[kernel]\nstate_dir = \"state\"\n\n[[pools]]\nrole = \"py\"\ndriver = \"stdio\"\nsize = 2\ncapacity = 2\ncommand = \"python3\"\nargs = [\"{}\"]\n\n",
        test_agent().display()
    );
    for name in order {
        cfg.push_str(&entry(name, &dir));
        cfg.push('\n');
    }
    let config = dir.join("hive.toml");
    std::fs::write(&config, cfg).expect("hive.toml");
    let mut steps = vec![json!({"id": "prep", "command": "true"})];
    for i in 0..6 {
        steps.push(json!({
            "id": format!("ask{i}"), "role": "py", "task": {"sleep": 0.05, "echo": i},
            "depends_on": ["prep"]
        }));
    }
    // Fails once (the automation rule retries it), then succeeds.
    steps.push(json!({
        "id": "flaky", "role": "py", "depends_on": ["prep"],
        "task": {"fail_once": dir.join("flaky.once").display().to_string()}
    }));
    steps.push(json!({
        "id": "done", "command": "echo", "args": ["done"],
        "depends_on": ["ask0", "ask1", "ask2", "ask3", "ask4", "ask5", "flaky"]
    }));
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        json!({"plan_id": "all-four", "version": "1", "steps": steps}).to_string(),
    )
    .expect("plan");
    let events = dir.join("events.jsonl");
    let out = Hive::new(&dir)
        .args(["run"])
        .args([&plan])
        .args(["--config"])
        .args([&config])
        .args(["--events"])
        .args([&events])
        .args(["--quiet", "--json"])
        .run();
    assert_eq!(out.code, 0, "{order:?}: {out}");
    let r = out.json();
    assert_eq!(r["state"], "succeeded", "{r}");
    let lines: Vec<Value> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // The automation rule retried the flaky step's task inside its one step attempt (a
    // plugin's retry is the kernel's, not the plan's: see docs/plugins.md).
    let flaky: Vec<&str> = lines
        .iter()
        .filter(|e| e["type"] == "attempt_finished" && e["name"] == "flaky")
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(flaky, ["failed", "succeeded"], "{order:?}");
    let statuses: BTreeMap<String, Value> = lines
        .iter()
        .filter(|e| e["type"] == "plugin_status")
        .filter_map(|e| Some((e["plugin"].as_str()?.to_string(), e["status"].clone())))
        .collect();
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        ["automation", "development", "performance", "production"],
        "every plugin reports its status at shutdown"
    );
    // The trace has every line the development plugin says it wrote.
    let trace = std::fs::read_to_string(dir.join("trace.jsonl")).expect("trace");
    assert_eq!(
        statuses["development"]["trace"]["lines"].as_u64(),
        Some(trace.lines().count() as u64)
    );
    statuses
}

fn check(s: &BTreeMap<String, Value>, order: &[&str]) {
    // performance: 7 attempts of role py (6 + the flaky one twice) and 2 local commands.
    let perf = &s["performance"];
    assert_eq!(perf["roles"]["py"]["attempts"], 8, "{order:?}: {perf}");
    assert_eq!(perf["roles"]["py"]["failed"], 1, "{order:?}: {perf}");
    assert_eq!(perf["roles"]["local"]["attempts"], 2, "{order:?}: {perf}");
    let p50 = perf["roles"]["py"]["latency_ms"]["p50"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(p50 >= 40.0, "{order:?}: sleeps of 50 ms: p50 {p50}");
    // automation: the rule matched once; the role's breaker saw every attempt and stayed
    // closed (1 failure in 8 is under the rate).
    let auto = &s["automation"];
    assert_eq!(auto["rules"][0]["hits"], 1, "{order:?}: {auto}");
    assert_eq!(auto["breakers"]["role:py"]["calls"], 8, "{order:?}: {auto}");
    assert_eq!(auto["breakers"]["role:py"]["state"], "closed", "{order:?}");
    // production: the role's SLA held over the run's attempts.
    let prod = &s["production"]["roles"]["py"];
    assert_eq!(prod["state"], "ok", "{order:?}: {prod}");
    assert_eq!(prod["breaches"], 0, "{order:?}: {prod}");
    assert_eq!(prod["samples"], 8, "{order:?}: {prod}");
    // development: the trace saw every attempt.
    let dev = &s["development"];
    assert!(
        dev["trace"]["lines"].as_u64().unwrap_or(0) > 40,
        "{order:?}: {dev}"
    );
}

#[test]
fn all_four_plugins_in_config_order_see_one_plan() {
    let s = run_with(&PLUGINS, "forward");
    check(&s, &PLUGINS);
}

#[test]
fn all_four_plugins_in_reverse_order_see_one_plan() {
    let mut order = PLUGINS;
    order.reverse();
    let s = run_with(&order, "reverse");
    check(&s, &order);
}
