//! Placement rules on real parts: guests deployed from a topology file whose rules
//! `dvms-launch deploy` writes into each domain's libvirt metadata, daemons that read them
//! from libvirt, loads from cpulimit inside the guests.
//!
//! h1 holds web-1 (spread "web") and db-1 (fenced to h1 and h3); h2 holds web-2 (spread
//! "web") and fill-2 (pinned); h3 holds web-3 (spread "web") and fill-3. Loading web-1
//! and db-1 overloads h1. Without rules, the best destination is h2 (the least busy one
//! after the move); within the rules only db-1 may move, and only to h3. Then, loads
//! moved to h2 overload it where no legal plan exists (fill-2 pinned, web-2 kept from h1
//! and h3 by its spread group): the daemons report why, naming the rule.

use std::time::Duration;

use dvms_tests::{start_daemons, wait_for, Testbed};

/// CPU capacity of each host, % of one core (testbed hosts share this machine's cores).
const CAPACITY: &str = "80";

const TOPOLOGY: &str = r#"
[[vm]]
name = "web-1"
host = "h1"
rules = { spread = "web" }

[[vm]]
name = "db-1"
host = "h1"
rules = { fence = ["h1", "h3"] }

[[vm]]
name = "web-2"
host = "h2"
rules = { spread = "web" }

[[vm]]
name = "fill-2"
host = "h2"
rules = { pin = true }

[[vm]]
name = "web-3"
host = "h3"
rules = { spread = "web" }

[[vm]]
name = "fill-3"
host = "h3"
"#;

fn load(tb: &Testbed, vm: &str, pct: u32) {
    let answer = tb.ok(&["guest", vm, "load", &pct.to_string()]);
    assert_eq!(answer.trim(), format!("ok load {pct}"));
}

fn host_of(tb: &Testbed, vm: &str) -> String {
    tb.running()
        .into_iter()
        .find(|(v, _)| v == vm)
        .map(|(_, h)| h)
        .unwrap_or_else(|| panic!("{vm} is not running"))
}

fn dump(log: &[serde_json::Value]) -> String {
    log.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn repairs_keep_spread_and_fence_rules_and_a_blocked_overload_names_the_rule() {
    let tb = Testbed::up(38, &["--hosts", "3"]);
    let topo = tb.dir().join("rules.toml");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    tb.ok(&[
        "deploy",
        "--topology",
        topo.to_str().unwrap(),
        "--kernel-args",
        "dvms.tick=250",
    ]);
    start_daemons(&tb, 3, 2, CAPACITY);
    // The daemons read the rules from libvirt.
    let st = tb.daemon_status(1).unwrap();
    let vms = st["scheduler"]["host"]["vms"].as_array().unwrap().clone();
    let spread: Vec<&serde_json::Value> = vms
        .iter()
        .filter(|v| v["rules"]["spread"] == "web")
        .collect();
    assert_eq!(spread.len(), 1, "{vms:?}");
    assert!(
        vms.iter()
            .any(|v| v["rules"]["fence"] == serde_json::json!(["h1", "h3"])),
        "{vms:?}"
    );
    assert_eq!(st["scheduler"]["host"]["name"], "h1");

    // h2 busier than h1's guests need, h3 busier still: without rules a move goes to h2.
    load(&tb, "fill-2", 10);
    load(&tb, "fill-3", 20);
    load(&tb, "web-1", 40);
    load(&tb, "db-1", 45);
    let solved = wait_for(Duration::from_secs(90), || {
        tb.events()
            .iter()
            .any(|e| e["event"] == "dissolved" && e["reason"] == "solved")
    });
    let log = tb.events();
    assert!(solved.is_some(), "no plan applied:\n{}", dump(&log));
    // Checked from libvirt: the fenced VM moved within its fence, the spread group never
    // shares a host.
    assert_eq!(host_of(&tb, "db-1"), "h3", "{}", dump(&log));
    let web: Vec<String> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|v| host_of(&tb, v))
        .collect();
    let mut distinct = web.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "spread group shares a host: {web:?}");
    assert_eq!(host_of(&tb, "fill-2"), "h2");
    let planned = log.iter().find(|e| e["event"] == "planned").unwrap();
    assert!(
        planned["headroom"]["peak_share"].as_f64().is_some(),
        "{planned}"
    );

    // Now h2: web-2 must leave (fill-2 is pinned) and may go nowhere.
    for vm in ["web-1", "db-1", "fill-3"] {
        load(&tb, vm, 0);
    }
    load(&tb, "web-2", 80);
    let named = wait_for(Duration::from_secs(90), || {
        (1..=3).any(|h| {
            tb.daemon_status(h).is_some_and(|s| {
                s["scheduler"]["last_no_plan"]["why"]["summary"]
                    .as_str()
                    .is_some_and(|w| w.contains("spread rule \"web\""))
            })
        })
    });
    let log = tb.events();
    assert!(
        named.is_some(),
        "no daemon said why h2 has no plan:\n{}\n{}",
        tb.ok(&["daemons", "status"]),
        dump(&log)
    );
    let why = log
        .iter()
        .find(|e| e["event"] == "no_plan")
        .unwrap_or_else(|| panic!("no no_plan event in the event logs:\n{}", dump(&log)));
    let stuck = why["why"]["stuck"].as_array().unwrap();
    assert!(stuck.iter().any(|s| s["group"] == "web"), "{why}");
    // No guest moved against its rules meanwhile, and `daemons status` shows the reason.
    assert_eq!(host_of(&tb, "web-2"), "h2");
    assert_eq!(host_of(&tb, "fill-2"), "h2");
    eprintln!(
        "repaired within the rules: db-1 on h3, web on {web:?}; then: {}",
        why["why"]["summary"]
    );
    let shown = tb.ok(&["daemons", "status"]);
    assert!(
        shown.contains("no plan:") && shown.contains("spread rule"),
        "{shown}"
    );
}
