//! The live view served by every daemon (`GET /`), loaded in headless Chromium from a real
//! testbed whose daemons require a bearer token: it renders every host with its VMs (by
//! name) and load, each daemon's role, and one point per member on the Vivaldi map, as the
//! daemons' `/status` say; a VM named with markup shows as text and runs nothing. During a
//! real repair it shows the partition, the plan and the migrations (by VM name) in its
//! timeline and each host's load chart, and a screenshot of it is taken.

use std::process::Command;
use std::time::Duration;

use dvms_tests::{start_daemons_with, status, wait_for, Testbed};

/// The attribute values `attr="..."` in `html`, in order.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    html.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &html[i + key.len()..];
            rest.find('"').map(|j| rest[..j].to_owned())
        })
        .collect()
}

/// The rendered section of host `id`.
fn section<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-id=\"{id}\" data-load="))?;
    let end = dom[start..].find("</section>")?;
    Some(&dom[start..start + end])
}

fn chromium(args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=8000",
        ])
        .args(args)
        .output()
        .expect("chromium runs (scripts/install-deps.sh installs it)")
}

fn chromium_dom(url: &str) -> String {
    let out = chromium(&["--dump-dom", url]);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the rendered page shows each daemon's VMs, role and loads as its `/status` says.
fn agrees(dom: &str, statuses: &[serde_json::Value]) -> Result<(), String> {
    for st in statuses {
        let id = st["id"].as_str().unwrap();
        let sec = section(dom, id).ok_or_else(|| format!("no section for {id}"))?;
        let mut shown: Vec<String> = attr_values(sec, "data-id")
            .into_iter()
            .filter(|v| v != id)
            .collect();
        let mut vms: Vec<String> = st["scheduler"]["host"]["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        shown.sort();
        vms.sort();
        if shown != vms {
            return Err(format!("VMs of {id}: page {shown:?}, status {vms:?}"));
        }
        let role = st["scheduler"]["role"]["role"].as_str().unwrap();
        if attr_values(sec, "data-role") != vec![role.to_owned()] {
            return Err(format!("role of {id}: status {role}"));
        }
        let shown_load: f64 = attr_values(sec, "data-load")[0].parse().unwrap();
        let load = st["scheduler"]["load"].as_f64().unwrap();
        if (shown_load - load).abs() >= 0.15 {
            return Err(format!("{id}: page {shown_load}, status {load}"));
        }
        // VM loads as /status gives them (they move a little between the two reads).
        for v in st["scheduler"]["host"]["vms"].as_array().unwrap() {
            let vid = v["id"].as_str().unwrap();
            let at = sec
                .find(&format!("data-id=\"{vid}\" data-cpu=\""))
                .ok_or_else(|| format!("no VM {vid}"))?;
            let cpu: f64 = attr_values(&sec[at..], "data-cpu")[0].parse().unwrap();
            if (cpu - v["cpu_demand"].as_f64().unwrap()).abs() >= 8.0 {
                return Err(format!("{vid}: {cpu} vs {v}"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_live_view_renders_what_the_daemons_status_says() {
    let tb = Testbed::up(49, &["--hosts", "3"]);
    tb.ok(&["deploy", "--vms", "6", "--kernel-args", "dvms.tick=250"]);
    // A guest whose libvirt name is markup: a script, and an image whose error handler
    // would mark the page if the name were inserted as HTML.
    let (_, host) = tb
        .running()
        .into_iter()
        .find(|(vm, _)| vm == "vm-6")
        .expect("vm-6 runs");
    let virsh = |args: &[&str]| {
        let mut a = vec!["exec", host.as_str(), "--", "virsh", "-c", "qemu:///system"];
        a.extend_from_slice(args);
        tb.ok(&a)
    };
    virsh(&["destroy", "vm-6"]);
    virsh(&["domrename", "vm-6", HOSTILE]);
    virsh(&["start", HOSTILE]);
    start_daemons_with(&tb, 3, 2, &["--capacity-cpu", "50", "--http-token"]);
    let token = tb.http_token().expect("a token");
    assert!(
        status(&tb.daemon_http(1)).is_none(),
        "/status answered without the token"
    );
    // Some load, under the threshold: nothing moves while the page is read.
    for vm in ["vm-1", "vm-2"] {
        tb.ok(&["guest", vm, "load", "15"]);
    }
    let url = format!("http://{}/#token={token}", tb.daemon_http(1));
    let mut dom = String::new();
    // The page polls every second; wait until it has drawn all three hosts.
    let drawn = wait_for(Duration::from_secs(60), || {
        dom = chromium_dom(&url);
        dom.contains("data-hosts=\"3\"")
    });
    assert!(drawn.is_some(), "the page did not draw three hosts:\n{dom}");
    // The page and /status are read a moment apart while loads still move (the guests'
    // load just started): read both again until they agree, as an operator would see.
    let mut statuses = Vec::new();
    let mut last = String::new();
    let agreed = wait_for(Duration::from_secs(60), || {
        dom = chromium_dom(&url);
        statuses = (1..=3)
            .map(|h| tb.daemon_status(h).expect("status"))
            .collect();
        match agrees(&dom, &statuses) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(
        agreed.is_some(),
        "the page never agreed with /status: {last}\n{dom}"
    );
    // The map: one point per member, this daemon's included.
    let map_start = dom.find("<svg id=\"map\"").expect("a map");
    let map_len = dom[map_start..].find("</svg>").expect("the map ends");
    let mut points = attr_values(&dom[map_start..map_start + map_len], "data-id");
    points.sort();
    let mut ids: Vec<String> = statuses
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(points, ids);
    // The hostile name: shown as text in its VM's line, nothing of it run.
    let escaped = HOSTILE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        dom.contains(&format!("<span class=\"vm-name\">{escaped}</span>")),
        "the name is not shown as text:\n{dom}"
    );
    assert!(
        !dom.contains("data-pwned"),
        "markup in a VM name ran:\n{dom}"
    );
    assert!(
        !dom.contains("<img"),
        "markup in a VM name became an element:\n{dom}"
    );
    // /status is readable from the page of another daemon (CORS), with the token.
    let raw = std::process::Command::new("curl")
        .args([
            "-si",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://{}/status", tb.daemon_http(2)),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&raw.stdout).to_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("access-control-allow-origin: *"),
        "{head}"
    );
}

/// A VM name a careless page would run: an image whose error handler marks the page, and
/// a script (libvirt refuses '/' in names, so no closing tags).
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned='img'\"><script>document.body.dataset.pwned='script'<script>";

/// During a real repair (4 guests of h1 loaded past its capacity), the page shows the
/// plan and the migrations by VM name in its timeline, each host's load chart, the
/// partition's hosts in one colour; a screenshot of it is written and is a real image.
#[test]
fn during_a_real_repair_the_live_view_shows_the_plan_and_migrations_in_its_timeline() {
    let tb = Testbed::up(54, &["--hosts", "3"]);
    tb.ok(&["deploy", "--vms", "12", "--kernel-args", "dvms.tick=250"]);
    start_daemons_with(&tb, 3, 4, &["--capacity-cpu", "80"]);
    let on_h1: Vec<String> = tb
        .running()
        .into_iter()
        .filter(|(_, h)| h == "h1")
        .map(|(v, _)| v)
        .collect();
    for vm in &on_h1 {
        tb.ok(&["guest", vm, "load", "30"]);
    }
    let moved = wait_for(Duration::from_secs(60), || {
        tb.events()
            .iter()
            .any(|e| e["event"] == "migration_result" && e["ok"] == true)
    });
    assert!(moved.is_some(), "no repair: {:?}", tb.events());
    let url = format!("http://{}/", tb.daemon_http(1));
    let mut dom = String::new();
    let shown = wait_for(Duration::from_secs(60), || {
        dom = chromium_dom(&url);
        let timeline = dom
            .find("<ol id=\"timeline\">")
            .map(|i| &dom[i..])
            .unwrap_or("");
        timeline.contains("data-event=\"planned\"")
            && timeline.contains("data-event=\"migration_result\"")
            && on_h1
                .iter()
                .any(|vm| timeline.contains(&format!("migration of {vm} done")))
    });
    assert!(
        shown.is_some(),
        "the timeline does not show the plan and a migration by name:\n{dom}"
    );
    // Every host's load chart, drawn from several samples.
    let charts = attr_values(&dom, "data-points");
    let drawn = charts
        .iter()
        .filter(|n| n.parse::<usize>().unwrap_or(0) >= 5)
        .count();
    assert!(
        drawn >= 3,
        "load charts with 5 samples or more: {charts:?}\n{dom}"
    );
    // A screenshot an operator would see: a PNG of the whole page.
    let png = tb.dir().join("live-view.png");
    let out = chromium(&[
        "--window-size=1280,1600",
        &format!("--screenshot={}", png.display()),
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    let keep = dvms_tests::tmp_dir("live-view-screenshot").join("live-view.png");
    std::fs::copy(&png, &keep).expect("screenshot kept");
    eprintln!("screenshot: {}", keep.display());
}
