//! End-to-end tests that no command outlives `hive`: SIGKILL of `hive` (the orphan guard),
//! a task timeout (the whole process group, grandchildren included) and Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hive_tests::{
    alive, become_subreaper, children_of, comm, pids_with_cmdline, process_group_gone, scratch,
    wait_until, Hive,
};

/// A `sleep` command line unique to this test process and `tag` (the trailing space is the
/// NUL that ends the command line, so a longer argument does not match).
fn needle(tag: u32) -> (String, String) {
    let arg = format!("{tag}.{}", std::process::id());
    let needle = format!("sleep {arg} ");
    (arg, needle)
}

/// A shell script that records its pid and process group in `group.txt`, starts a
/// background `sleep ARG` (a grandchild of `hive`) and then runs `sleep ARG` itself.
fn script(dir: &Path, arg: &str) -> PathBuf {
    let path = dir.join("task.sh");
    let text = format!(
        "read -r _ _ _ _ pgrp _ < /proc/$$/stat\n\
         echo \"$$ $pgrp\" > group.txt\n\
         sleep {arg} &\n\
         sleep {arg}\n"
    );
    std::fs::write(&path, text).expect("write task.sh");
    path
}

fn tasks_for(script: &Path, dir: &Path, timeout_s: Option<f64>) -> String {
    let mut t = serde_json::json!({
        "id": "sleeper",
        "command": "sh",
        "args": [script.to_string_lossy()],
        "cwd": dir.to_string_lossy(),
    });
    if let Some(s) = timeout_s {
        t["timeout_s"] = serde_json::json!(s);
    }
    serde_json::json!([t]).to_string()
}

/// (pid, pgid) the script wrote.
fn group_of(dir: &Path) -> (i32, i32) {
    let text = std::fs::read_to_string(dir.join("group.txt")).expect("the script wrote group.txt");
    let mut it = text
        .split_whitespace()
        .map(|w| w.parse::<i32>().expect("a number in group.txt"));
    (it.next().expect("pid"), it.next().expect("pgid"))
}

/// The test process's own process group.
fn own_pgid() -> i32 {
    // SAFETY: getpgrp(2) has no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}

#[test]
fn sigkill_of_hive_kills_its_commands_and_their_children() {
    become_subreaper();
    let dir = scratch("orphans-sigkill");
    let (arg, needle) = needle(311);
    let script = script(&dir, &arg);
    let mut hive = Hive::new(&dir)
        .args(["run", "--tasks", &tasks_for(&script, &dir, None)])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(8), || pids_with_cmdline(&needle).len()
            == 2),
        "the task's two sleeps never ran: {:?}\nstderr:\n{}",
        pids_with_cmdline(&needle),
        hive.stderr()
    );
    let (pid, pgid) = group_of(&dir);
    assert_eq!(pid, pgid, "the command leads its own process group");
    assert_ne!(pgid, own_pgid());
    // The guard names itself once it has closed its inherited descriptors, which may take a
    // moment on a loaded machine.
    let mut guards = Vec::new();
    wait_until(Duration::from_secs(3), || {
        guards = children_of(hive.pid())
            .into_iter()
            .filter(|p| comm(*p) == "hive-reaper")
            .collect();
        !guards.is_empty()
    });
    let names: Vec<String> = children_of(hive.pid()).into_iter().map(comm).collect();
    assert_eq!(
        guards.len(),
        1,
        "one orphan guard (hive-reaper) per hive process; children: {names:?}"
    );

    hive.signal(libc::SIGKILL);
    let done = hive
        .wait(Duration::from_secs(5))
        .expect("hive dies on SIGKILL");
    assert_eq!(done.signal, Some(libc::SIGKILL), "{done}");
    assert!(
        wait_until(Duration::from_secs(5), || pids_with_cmdline(&needle)
            .is_empty()),
        "commands outlived a SIGKILLed hive: {:?}",
        pids_with_cmdline(&needle)
    );
    assert!(
        wait_until(Duration::from_secs(5), || process_group_gone(pgid)),
        "group {pgid} still exists"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !alive(guards[0])),
        "the orphan guard {} outlived its work",
        guards[0]
    );
}

#[test]
fn timeout_kills_the_whole_process_group() {
    become_subreaper();
    let dir = scratch("orphans-timeout");
    let (arg, needle) = needle(312);
    let script = script(&dir, &arg);
    let run = Hive::new(&dir)
        .args([
            "run",
            "--json",
            "--tasks",
            &tasks_for(&script, &dir, Some(0.5)),
        ])
        .run();
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.json()["tasks"][0]["status"], "timed_out", "{run}");
    assert!(
        run.elapsed < Duration::from_secs(5),
        "the timeout took too long:\n{run}"
    );
    let (pid, pgid) = group_of(&dir);
    assert_eq!(pid, pgid, "the command leads its own process group");
    assert_ne!(pgid, own_pgid());
    // Once hive has exited, nothing of the task may be left, the background sleep included.
    assert!(
        pids_with_cmdline(&needle).is_empty(),
        "left behind: {:?}",
        pids_with_cmdline(&needle)
    );
    assert!(!alive(pid), "the task's shell {pid} still runs");
    // Only the reaping of zombies (by us, their subreaper) may lag behind.
    assert!(
        wait_until(Duration::from_secs(2), || process_group_gone(pgid)),
        "group {pgid} still exists"
    );
}

#[test]
fn sigint_of_hive_run_cancels_and_stops_its_commands() {
    become_subreaper();
    let dir = scratch("orphans-sigint");
    let (arg, needle) = needle(313);
    let script = script(&dir, &arg);
    let mut hive = Hive::new(&dir)
        .args(["run", "--tasks", &tasks_for(&script, &dir, None)])
        .spawn();
    assert!(
        wait_until(Duration::from_secs(8), || pids_with_cmdline(&needle).len()
            == 2),
        "the task's two sleeps never ran: {:?}\nstderr:\n{}",
        pids_with_cmdline(&needle),
        hive.stderr()
    );
    let (_, pgid) = group_of(&dir);
    hive.signal(libc::SIGINT);
    let done = hive
        .wait(Duration::from_secs(8))
        .expect("hive exits after SIGINT");
    assert_eq!(done.code, 130, "{done}");
    assert!(done.stderr.contains("interrupted"), "{done}");
    assert!(
        pids_with_cmdline(&needle).is_empty(),
        "left behind: {:?}",
        pids_with_cmdline(&needle)
    );
    assert!(
        wait_until(Duration::from_secs(2), || process_group_gone(pgid)),
        "group {pgid} still exists"
    );
}

#[test]
fn timeout_escalates_to_sigkill_after_the_grace_period() {
    become_subreaper();
    let dir = scratch("orphans-grace");
    let (arg, needle) = needle(314);
    let config = dir.join("hive.toml");
    std::fs::write(&config, "[kernel]\ngrace_period_s = 0.5\n").expect("write hive.toml");
    // The shell ignores SIGTERM (and so does its sleep, which inherits the disposition).
    let tasks = serde_json::json!([{
        "command": format!("trap '' TERM; sleep {arg}; touch survived"),
        "cwd": dir.to_string_lossy(),
        "timeout_s": 0.3,
    }]);
    let run = Hive::new(&dir)
        .args(["run", "--json", "--tasks", &tasks.to_string(), "--config"])
        .args([&config])
        .run();
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.json()["tasks"][0]["status"], "timed_out", "{run}");
    assert!(
        run.elapsed >= Duration::from_millis(750),
        "SIGKILL came before the 0.5 s grace period:\n{run}"
    );
    assert!(
        run.elapsed < Duration::from_secs(4),
        "no SIGKILL after the grace period:\n{run}"
    );
    assert!(
        pids_with_cmdline(&needle).is_empty(),
        "left behind: {:?}",
        pids_with_cmdline(&needle)
    );
    assert!(!dir.join("survived").exists());
}
