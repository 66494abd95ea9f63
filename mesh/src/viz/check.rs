//! `mesh check`: the control plane ready, the issuer and every sidecar's certificate valid and
//! not near expiry, every sidecar ready and every workload in discovery; a hint for each
//! failure.

use super::Target;
use crate::metrics;
use crate::out::{chain, outln};
use serde::Serialize;
use std::{net::SocketAddr, process::ExitCode};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// Warn when a certificate expires sooner than this many hours.
    #[arg(long, default_value = "6")]
    expiry_warning_hours: f64,
    /// Print JSON instead of pass/fail lines.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<String>,
}

fn result(check: String, outcome: Result<String, (String, String)>) -> CheckResult {
    match outcome {
        Ok(detail) => CheckResult {
            check,
            ok: true,
            detail,
            hint: None,
        },
        Err((detail, hint)) => CheckResult {
            check,
            ok: false,
            detail,
            hint: Some(hint),
        },
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    metrics::get(addr, path).await
}

/// The first sample named `name`, read with the control plane's parser.
fn metric(text: &str, name: &str) -> Option<f64> {
    linkerd_control::prom::Scrape::parse_lossy(text)
        .0
        .value(name, &[])
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An expiry check: fails when `expiry` has passed or is nearer than `warn_secs`.
fn expiry_ok(what: &str, expiry: f64, now: f64, warn_secs: f64) -> Result<String, String> {
    let left = expiry - now;
    let human = if left.abs() >= 3600.0 {
        format!("{:.1} h", left / 3600.0)
    } else {
        format!("{:.0} s", left)
    };
    if left <= 0.0 {
        Err(format!(
            "{what} expired {} ago",
            human.trim_start_matches('-')
        ))
    } else if left < warn_secs {
        Err(format!("{what} expires in {human}"))
    } else {
        Ok(format!("{what} valid for {human}"))
    }
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (proxies, state) = args.target.resolve()?;
    let warn = args.expiry_warning_hours * 3600.0;
    let now = now_unix();
    let mut results = Vec::new();
    if let Some(state) = &state {
        let err_log = crate::up::control::err_log(&state.dir.join("logs"));
        for (name, addr) in [
            ("identity", state.identity_admin),
            ("destination", state.destination_admin),
            ("policy", state.policy_admin),
        ] {
            let outcome = match admin_get(addr, "/ready").await {
                Ok((200, _)) => Ok(format!("ready at {addr}")),
                Ok((status, body)) => Err((
                    format!("{addr}/ready answered {status}: {}", body.trim()),
                    format!("see {}", err_log.display()),
                )),
                Err(e) => Err((
                    format!("cannot reach {addr}: {}", chain(&e)),
                    format!(
                        "is `mesh up` (pid {}) still running? see {}",
                        state.pid,
                        err_log.display()
                    ),
                )),
            };
            results.push(result(format!("the {name} service is ready"), outcome));
        }
        let issuer = match admin_get(state.identity_admin, "/metrics").await {
            Ok((200, text)) => match metric(&text, "identity_issuer_expiry_timestamp_seconds") {
                Some(expiry) => expiry_ok("the issuer certificate", expiry, now, warn).map_err(
                    |d| {
                        (
                            d,
                            "rotate the issuer: `mesh identity rotate` (the identity service reloads it)"
                                .to_string(),
                        )
                    },
                ),
                None => Err((
                    "the identity service reports no issuer".into(),
                    "check the issuer files it was started with".into(),
                )),
            },
            Ok((status, _)) => Err((
                format!("its /metrics answered {status}"),
                "see the identity service's log".into(),
            )),
            Err(e) => Err((
                format!("cannot read its metrics: {}", chain(&e)),
                "is the identity service running?".into(),
            )),
        };
        results.push(result("the issuer is valid".into(), issuer));
        let anchor = match std::fs::read(&state.trust_anchor_file) {
            Ok(pem) => match linkerd_identity::ca::TrustAnchors::from_pem(&pem) {
                Ok(anchors) => Ok(format!("{} trust anchor(s) parsed", anchors.ders().len())),
                Err(e) => Err((
                    format!("{}: {e}", state.trust_anchor_file.display()),
                    "restart `mesh up` to generate fresh trust".into(),
                )),
            },
            Err(e) => Err((
                format!("cannot read {}: {e}", state.trust_anchor_file.display()),
                "restart `mesh up`".into(),
            )),
        };
        results.push(result("the trust anchor is readable".into(), anchor));
    }
    for p in &proxies {
        let ready = match admin_get(p.admin, "/ready").await {
            Ok((200, _)) => Ok(format!("ready at {}", p.admin)),
            Ok((status, body)) => Err((
                format!("{}/ready answered {status}: {}", p.admin, body.trim()),
                "a sidecar is ready once it has a certificate: is the identity service reachable and is its token valid?".into(),
            )),
            Err(e) => Err((
                format!("cannot reach {}: {}", p.admin, chain(&e)),
                match &state {
                    Some(s) => format!(
                        "see {}/{}-proxy.err.log",
                        s.dir.join("logs").display(),
                        p.name
                    ),
                    None => "is the proxy running, with its admin server on that address?".into(),
                },
            )),
        };
        results.push(result(format!("{}: the sidecar is ready", p.name), ready));
        let cert = match admin_get(p.admin, "/metrics").await {
            Ok((200, text)) => {
                // Linkerd's current name, and the one proxies before 2024 exported.
                let expiry = metric(&text, "control_identity_cert_expiration_timestamp_seconds")
                    .or_else(|| metric(&text, "identity_cert_expiration_timestamp_seconds"));
                match expiry {
                    Some(expiry) => {
                        expiry_ok("its certificate", expiry, now, warn).map_err(|d| {
                            (
                                d,
                                "the sidecar renews at 70% of the lifetime: check the identity service and the sidecar's log".into(),
                            )
                        })
                    }
                    None => Err((
                        "it has no certificate".into(),
                        "is identity configured (LINKERD2_PROXY_IDENTITY_*)?".into(),
                    )),
                }
            }
            Ok((status, _)) => Err((
                format!("its /metrics answered {status}"),
                "see the sidecar's log".into(),
            )),
            Err(e) => Err((chain(&e), "is the proxy running?".into())),
        };
        results.push(result(
            format!("{}: the sidecar's certificate is valid", p.name),
            cert,
        ));
        if let Some(s) = &state
            && let Some(w) = s.workloads.iter().find(|w| w.name == p.name)
        {
            let discovery = if w.ready {
                Ok(format!("{} serves {}", w.app, w.service))
            } else {
                Err((
                    format!("its app at {} is not ready", w.app),
                    format!(
                        "its app fails its health check or has exited: see {}/{}.err.log",
                        s.dir.join("logs").display(),
                        p.name
                    ),
                ))
            };
            results.push(result(format!("{}: in discovery", p.name), discovery));
        }
    }
    let ok = results.iter().all(|r| r.ok);
    let control_plane_checked = state.is_some();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "control_plane_checked": control_plane_checked,
                "checks": results
            }))?
        )?;
    } else {
        for r in &results {
            outln!(
                "{} {} ({})",
                if r.ok { "√" } else { "×" },
                r.check,
                r.detail
            )?;
            if let Some(h) = &r.hint {
                outln!("    hint: {h}")?;
            }
        }
        outln!(
            "\n{}",
            match (ok, control_plane_checked) {
                (true, true) => "Status check results are √",
                (true, false) =>
                    "The sidecars' checks passed; the control plane was not checked (--admin \
                     names sidecars only: use --mesh for a local mesh)",
                (false, _) => "Some checks failed",
            }
        )?;
    }
    Ok(crate::out::status(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_checks_warn_before_and_fail_after() {
        assert!(expiry_ok("x", 1000.0 + 86400.0, 1000.0, 3600.0).is_ok());
        let soon = expiry_ok("x", 1000.0 + 600.0, 1000.0, 3600.0).unwrap_err();
        assert!(soon.contains("expires in 600 s"), "{soon}");
        let gone = expiry_ok("x", 1000.0 - 7200.0, 1000.0, 3600.0).unwrap_err();
        assert!(gone.contains("expired 2.0 h ago"), "{gone}");
    }

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "# HELP a\nidentity_cert_expiration_timestamp_seconds 123.5\nidentity_cert_expiration_timestamp_seconds_other 9\n";
        assert_eq!(
            metric(text, "identity_cert_expiration_timestamp_seconds"),
            Some(123.5)
        );
        assert_eq!(metric(text, "missing"), None);
    }
}
