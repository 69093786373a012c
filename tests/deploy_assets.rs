//! The monitoring assets in `deploy/` against the daemon they monitor: every metric name the
//! Grafana dashboard and the Prometheus alert rules query is a family the daemon exports on
//! `/metrics`, and `promtool` accepts the rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hepfwd_harness::privileged;
use hepfwd_tests::collector::{Agent, TcpAgent, TcpCollector, UdpCollector, WAIT};
use hepfwd_tests::daemon::{Daemon, tcp_destination, udp_destination};
use hepfwd_tests::hepfwd::workspace_root;
use hepfwd_tests::hepgen::Pkt;
use hepfwd_tests::metrics::http_get;

const DASHBOARD: &str = "deploy/grafana/hepfwd.json";
const RULES: &str = "deploy/prometheus/hepfwd-alerts.yml";
/// Where the families are declared; the `hepfwd_xdp_*` ones are only exported while the
/// kernel data plane runs, so a userspace daemon cannot show them.
const STATS_RS: &str = "hep-user/src/admin/stats.rs";

fn asset(rel: &str) -> (PathBuf, String) {
    let path = workspace_root().join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (path, text)
}

/// Every `hepfwd_[a-z0-9_]+` in `expr`.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("hepfwd_") {
        // Not the tail of a longer identifier.
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            into.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
}

/// The `expr` of every target of every panel (rows included) of the dashboard.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// The `expr:` values of a rules file: inline, or a block scalar (`>-`, `|`) on the lines
/// indented deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('>') || value.starts_with('|') {
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                block.push(l.trim());
                i += 1;
            }
            out.push(block.join(" "));
        } else {
            out.push(value.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out
}

/// The label names an expression groups by (`by (a, b)`, `on (a)`, `ignoring (a)`) or
/// selects on (`{a="x", b=~"y"}`).
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| {
        s.trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.trim().is_empty()
    };
    for kw in ["by", "on", "ignoring", "without"] {
        let mut rest = expr;
        while let Some(i) = rest.find(kw) {
            let before = rest[..i].chars().next_back();
            let after = rest[i + kw.len()..].trim_start();
            rest = &rest[i + kw.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let Some(list) = after.strip_prefix('(') else {
                continue;
            };
            let end = list.find(')').unwrap_or(list.len());
            out.extend(
                list[..end]
                    .split(',')
                    .filter(|l| ident(l))
                    .map(|l| l.trim().to_string()),
            );
        }
    }
    let mut rest = expr;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i + 1..];
        let end = tail.find('}').unwrap_or(tail.len());
        for m in tail[..end].split(',') {
            if let Some(k) = m.split(['=', '!']).next().filter(|k| ident(k)) {
                out.insert(k.trim().to_string());
            }
        }
        rest = &tail[end..];
    }
    out
}

/// The family a sample name belongs to (`_total` of counters, `_bucket`/`_sum`/`_count` of
/// histograms and summaries stripped).
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The metric names the dashboard and the rules use, and their expressions.
fn used_names() -> (BTreeSet<String>, Vec<String>) {
    let (dash_path, dash_text) = asset(DASHBOARD);
    let dash: serde_json::Value = serde_json::from_str(&dash_text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", dash_path.display()));
    assert!(
        dash["__inputs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "the dashboard has no DS_PROMETHEUS input"
    );
    assert!(
        dash["templating"]["list"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v["name"] == "instance")),
        "the dashboard has no $instance variable"
    );
    let dash_exprs = dashboard_exprs(&dash);
    let (_, rules_text) = asset(RULES);
    let rules = rule_exprs(&rules_text);
    assert!(dash_exprs.len() >= 8, "dashboard exprs: {dash_exprs:?}");
    assert!(rules.len() >= 4, "rule exprs: {rules:?}");
    let mut used = BTreeSet::new();
    for e in dash_exprs.iter().chain(&rules) {
        metric_names(e, &mut used);
    }
    let exprs = dash_exprs.into_iter().chain(rules).collect();
    (used, exprs)
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let (used, exprs) = used_names();

    // A daemon with every kind of counter: UDP and TCP on one listener, a UDP and a TCP
    // destination, a drop route and a sampled one.
    let udp_col = UdpCollector::new("udp-col");
    let tcp_col = TcpCollector::new("tcp-col");
    // A spool on the TCP destination: its families are exported only where one is set.
    let spool = hepfwd_tests::peers::TestDir::new("deploy-spool").unwrap();
    let spool_dir = spool.join("spool").display().to_string();
    let d = Daemon::start("deploy-assets", |p| {
        format!(
            "\n[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{0}\"\ntcp = \"127.0.0.1:{0}\"\n",
            p.listen
        ) + &udp_destination("udp-col", udp_col.addr)
            + &tcp_destination("tcp-col", tcp_col.addr, Some(1000))
            + &format!("spool = {{ dir = \"{spool_dir}\" }}\n")
            + "\n[[route]]\nname = \"no-logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n"
            + "\n[[route]]\nname = \"sip\"\nmatch = { proto = [1] }\nforward = [\"tcp-col\"]\nsample = 0.5\n"
            + "\n[default]\nforward = [\"udp-col\"]\n"
    });
    let agent = Agent::new();
    let mut tcp_agent = TcpAgent::connect(d.listen());
    for i in 0..4 {
        agent.send(d.listen(), &Pkt::log("l", i).encode());
        agent.send(d.listen(), &Pkt::rtcp("r@deploy.test", i).encode());
        agent.send(
            d.listen(),
            &Pkt::sip(&format!("c-{i}@deploy.test"), i).encode(),
        );
        tcp_agent.write(&Pkt::sip(&format!("t-{i}@deploy.test"), i).encode());
    }
    // A parse error (that family only shows kinds that happened).
    agent.send(d.listen(), b"HEP3");
    d.wait_for("12 UDP and 4 TCP packets received", WAIT, |m| {
        m.get(
            "hepfwd_received_total",
            &[("listener", "agents"), ("transport", "udp")],
        ) >= 12
            && m.get(
                "hepfwd_received_total",
                &[("listener", "agents"), ("transport", "tcp")],
            ) == 4
    });
    udp_col.expect(4, WAIT);
    d.wait_for("the routes counted", Duration::from_secs(5), |m| {
        m.get("hepfwd_route_dropped_total", &[("route", "no-logs")]) == 4
            && m.get("hepfwd_route_matches_total", &[("route", "sip")]) == 8
            && m.get("hepfwd_parse_errors_total", &[("listener", "agents")]) == 1
    });

    let (status, text) = http_get(d.admin, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let scrape = d.metrics();
    check_exported(&used, &exprs, &text, &scrape, false);
    // The assets cover the main families.
    for want in [
        "hepfwd_received_total",
        "hepfwd_destination_sent_total",
        "hepfwd_route_matches_total",
        "hepfwd_destination_dropped_total",
        "hepfwd_destination_queue_depth",
        "hepfwd_destination_reconnects_total",
        "hepfwd_destination_connected",
        "hepfwd_xdp_packets_total",
        "hepfwd_destination_spool_frames",
        "hepfwd_destination_spool_bytes",
        "hepfwd_destination_spool_max_bytes",
        "hepfwd_destination_spooling",
    ] {
        assert!(used.contains(want), "{want} is not used; used: {used:?}");
    }
}

/// The same in `--mode xdp` (in a namespace topology, XDP attached to `in0`): there the
/// kernel-only families (`hepfwd_xdp_*`) must be on `/metrics` too, not just declared.
#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exported_in_xdp_mode() {
    use hepfwd_tests::daemon::Mode;
    use hepfwd_tests::netns::{COL_A, COL_B, IF_IN, LISTEN, Ns, SND, Topology, TopologyPeers};
    const NAME: &str = "every_metric_the_dashboard_and_the_alerts_use_is_exported_in_xdp_mode";
    if !privileged::available(NAME) {
        return;
    }
    let (used, exprs) = used_names();
    let topo = Topology::new("deploy-x");
    let spool = hepfwd_tests::peers::TestDir::new("deploy-x-spool").unwrap();
    let spool_dir = spool.join("spool").display().to_string();
    let udp_col = topo.udp_collector("udp-col", COL_A, 9061);
    let tcp_col = topo.tcp_collector("tcp-col", COL_B, 9062);
    topo.warm_neighbours();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:9100\"\n[xdp]\ninterfaces = [\"in0\"]\nattach = \"native\"\n\n[[listener]]\nname = \"agents\"\nudp = \"{LISTEN}\"\n"
    ) + &udp_destination("udp-col", (COL_A, 9061).into())
        + &tcp_destination("tcp-col", (COL_B, 9062).into(), Some(1000))
        + &format!("spool = {{ dir = \"{spool_dir}\" }}\n")
        + "\n[[route]]\nname = \"no-logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n"
        + "\n[[route]]\nname = \"sip\"\nmatch = { proto = [1] }\nforward = [\"tcp-col\"]\nsample = 0.5\n"
        + "\n[default]\nforward = [\"udp-col\"]\n";
    let d = topo.hepfwd(Mode::Xdp, &config);
    assert!(topo.xdp_attached(Ns::Fwd, IF_IN), "XDP is not attached");
    let agent = topo.agent(SND);
    for i in 0..4 {
        agent.send_all(
            LISTEN,
            &[
                Pkt::log("l", i).encode(),
                Pkt::rtcp("r@deploy.test", i).encode(),
                Pkt::sip(&format!("c-{i}@deploy.test"), i).encode(),
            ],
        );
    }
    agent.send_all(LISTEN, &[b"HEP3".to_vec()]);
    udp_col.expect(4, WAIT);
    d.wait_for("the kernel counted", Duration::from_secs(5), |m| {
        m.get("hepfwd_xdp_packets_total", &[("counter", "route_drop")]) == 4
    });
    let (status, text) = d.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let scrape = d.metrics();
    check_exported(&used, &exprs, &text, &scrape, true);
    drop(tcp_col);
}

/// Every name in `used` is a family `/metrics` (`text`) declares with the right type and a
/// HELP line, and every label the expressions name is on one of their samples. Without
/// `xdp`, the kernel-only families may be absent but must be ones stats.rs writes.
fn check_exported(
    used: &BTreeSet<String>,
    exprs: &[String],
    text: &str,
    scrape: &hepfwd_tests::metrics::Metrics,
    xdp: bool,
) {
    let (_, stats_rs) = asset(STATS_RS);
    let mut missing: Vec<String> = Vec::new();
    for name in used {
        let fam = family(name);
        let declared = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {fam} ")))
            .map(str::trim);
        match declared {
            Some(kind) => {
                // A `_total` is read from a counter; a bare family name from a gauge.
                let ok = if name.ends_with("_total") {
                    kind == "counter"
                } else {
                    name != fam || kind == "gauge"
                };
                assert!(ok, "{name} is used, but /metrics declares {fam} a {kind}");
                assert!(
                    text.contains(&format!("# HELP {fam} ")),
                    "no HELP line for {fam}"
                );
            }
            // Only with the kernel data plane: the family must still be one stats.rs writes,
            // read as a counter.
            None if !xdp && fam.starts_with("hepfwd_xdp_") => {
                if !(stats_rs.contains(&format!("\"{fam}\"")) && name.ends_with("_total")) {
                    missing.push(name.clone());
                }
            }
            None => missing.push(name.clone()),
        }
    }
    // Every label an expression names is on one of its metrics (or is `instance`, which
    // Prometheus adds; or is a label of the kernel-only families, `counter`, `outcome`,
    // `reason`, ...: checked on a live `/metrics` in xdp mode).
    for e in exprs {
        let mut names = BTreeSet::new();
        metric_names(e, &mut names);
        for label in label_names(e) {
            let known = label == "instance"
                || names.iter().any(|n| {
                    scrape
                        .samples
                        .iter()
                        .any(|s| &s.name == n && s.labels.contains_key(&label))
                        || (!xdp
                            && n.starts_with("hepfwd_xdp_")
                            && [
                                "counter",
                                "outcome",
                                "reason",
                                "route",
                                "destination",
                                "path",
                            ]
                            .contains(&label.as_str()))
                });
            // Template variables and annotation templates are not labels.
            if !known && !label.starts_with('$') {
                missing.push(format!("label {label:?} in {e}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics used in {DASHBOARD} or {RULES} that hepfwd (xdp: {xdp}) does not export: {missing:?}\n/metrics:\n{text}"
    );
}

/// `promtool check rules FILE`: (success, stdout + stderr), `None` when promtool is missing.
fn promtool_check_rules(path: &std::path::Path) -> Option<(bool, String)> {
    match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(path)
        .output()
    {
        Ok(out) => Some((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("run promtool: {e}"),
    }
}

#[test]
fn promtool_checks_the_alert_rules() {
    const NAME: &str = "promtool_checks_the_alert_rules";
    let (path, _) = asset(RULES);
    let Some((ok, out)) = promtool_check_rules(&path) else {
        privileged::skip(
            NAME,
            "promtool is not installed (apt-get install prometheus, or cargo xtask setup)",
        );
        return;
    };
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules {} failed:\n{out}",
        path.display()
    );

    // The dashboard's queries parse too: each one as a recording rule, with Grafana's
    // variables replaced by values.
    let (_, dash_text) = asset(DASHBOARD);
    let dash: serde_json::Value = serde_json::from_str(&dash_text).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs(&dash).iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules += &format!(
            "      - record: hepfwd_dashboard_query_{i}\n        expr: {}\n",
            serde_json::Value::String(e)
        );
    }
    let dir = hepfwd_tests::peers::TestDir::new("deploy-assets-promql").unwrap();
    let tmp = dir.join("dashboard-queries.yml");
    std::fs::write(&tmp, rules).unwrap();
    let (ok, out) = promtool_check_rules(&tmp).expect("promtool ran a moment ago");
    assert!(
        ok && out.contains("SUCCESS"),
        "a query of {DASHBOARD} is not valid PromQL:\n{out}"
    );
}

#[test]
fn the_extractors_find_names_and_block_exprs() {
    let mut names = BTreeSet::new();
    metric_names(
        "sum(rate(hepfwd_a_total{x=\"y\"}[5m])) / hepfwd_b_bucket unless not_hepfwd_c",
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["hepfwd_a_total", "hepfwd_b_bucket"]
    );
    assert_eq!(family("hepfwd_b_bucket"), "hepfwd_b");
    assert_eq!(
        label_names("sum by (a, b) (rate(x{c=\"1\", d=~\"$v\"}[5m])) / ignoring(e) y").len(),
        5
    );
    let exprs = rule_exprs(
        "  - alert: A\n    expr: hepfwd_x == 0\n    for: 1m\n  - alert: B\n    expr: >-\n      hepfwd_y\n      and hepfwd_z\n    for: 5m\n",
    );
    assert_eq!(exprs, ["hepfwd_x == 0", "hepfwd_y and hepfwd_z"]);
}
