use super::*;

#[test]
fn defaults_match_linkerd() {
    let c = Config::from_strings(&HashMap::new()).unwrap();
    assert_eq!(c.inbound.listen_addr, "0.0.0.0:4143".parse().unwrap());
    assert_eq!(c.outbound.listen_addr, "127.0.0.1:4140".parse().unwrap());
    assert_eq!(c.admin.listen_addr, "127.0.0.1:4191".parse().unwrap());
    assert_eq!(c.inbound.detect_timeout, DEFAULT_DETECT_TIMEOUT);
    assert_eq!(c.outbound.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.inbound.connect_timeout, Duration::from_millis(100));
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(120));
    assert!(c.outbound.opaque_ports.contains(&3306));
    assert!(c.cores >= 1);
}

#[test]
fn parses_every_setting() {
    let env = [
        (ENV_INBOUND_LISTEN_ADDR, "127.0.0.1:5143"),
        (ENV_OUTBOUND_LISTEN_ADDR, "127.0.0.1:5140"),
        (ENV_ADMIN_LISTEN_ADDR, "127.0.0.1:5191"),
        (ENV_INBOUND_DETECT_TIMEOUT, "250ms"),
        (ENV_OUTBOUND_DETECT_TIMEOUT, "2s"),
        (ENV_OUTBOUND_CONNECT_TIMEOUT, "300"),
        (ENV_INBOUND_OPAQUE_PORTS, "5432, 7000-7002"),
        (ENV_SHUTDOWN_GRACE_PERIOD, "5m"),
        (ENV_CORES, "1"),
        (ENV_LOG, "debug"),
        (ENV_LOG_FORMAT, "json"),
        (ENV_INBOUND_FORWARD_ADDR, "127.0.0.1:8080"),
        (ENV_LOCAL_LISTENERS, "db=127.0.0.1:15432>db.local:5432"),
        (
            ENV_STATIC_ENDPOINTS,
            "db.local:5432=127.0.0.2:5432|127.0.0.3:5432",
        ),
    ];
    let c = Config::from_strings(&env).unwrap();
    assert_eq!(c.inbound.detect_timeout, Duration::from_millis(250));
    assert_eq!(c.outbound.detect_timeout, Duration::from_secs(2));
    assert_eq!(c.outbound.connect_timeout, Duration::from_millis(300));
    assert_eq!(c.inbound.opaque_ports, vec![5432, 7000, 7001, 7002]);
    assert_eq!(c.shutdown_grace_period, Duration::from_secs(300));
    assert_eq!(c.cores, 1);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(
        c.inbound.forward_addr,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        c.outbound.local_listeners,
        vec![LocalListener {
            name: "db".into(),
            listen_addr: "127.0.0.1:15432".parse().unwrap(),
            target: "db.local:5432".into(),
        }]
    );
    assert_eq!(c.outbound.static_endpoints[0].0, "db.local:5432");
    assert_eq!(c.outbound.static_endpoints[0].1.len(), 2);
    assert!(c.identity.is_none());
}

#[test]
fn invalid_values_name_the_variable() {
    let cases: &[(&str, &str)] = &[
        (ENV_INBOUND_LISTEN_ADDR, "nope"),
        (ENV_OUTBOUND_DETECT_TIMEOUT, "10 parsecs"),
        (ENV_INBOUND_OPAQUE_PORTS, "0"),
        (ENV_INBOUND_OPAQUE_PORTS, "9-3"),
        (ENV_CORES, "0"),
        (ENV_LOG_FORMAT, "xml"),
        (ENV_LOG, "info,foo=notalevel"),
        (ENV_SHUTDOWN_ENDPOINT_ENABLED, "maybe"),
        (ENV_LOCAL_LISTENERS, "db=127.0.0.1:1"),
        (ENV_STATIC_ENDPOINTS, "svc=127.0.0.1:80"),
        (ENV_STATIC_ENDPOINTS, "svc:80=127.0.0.1:80#Not_A_Name"),
        (ENV_IDENTITY_TRUST_ANCHORS, "not pem"),
    ];
    for (name, value) in cases {
        let mut env = HashMap::new();
        env.insert(name.to_string(), value.to_string());
        let err = Config::from_strings(&env).expect_err(value);
        assert_eq!(err.name, *name, "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn listeners_must_not_collide() {
    let env = [
        (ENV_OUTBOUND_LISTEN_ADDR, "127.0.0.1:4000"),
        (ENV_ADMIN_LISTEN_ADDR, "127.0.0.1:4000"),
    ];
    let err = Config::from_strings(&env).unwrap_err();
    assert_eq!(err.name, ENV_ADMIN_LISTEN_ADDR);
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("365d").unwrap(),
        Duration::from_secs(365 * 86400)
    );
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn identity_settings() {
    let anchors = rcgen::CertificateParams::new(vec!["root".to_string()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let name = "web.ns.serviceaccount.identity.linkerd.cluster.local";
    let env = [
        (ENV_IDENTITY_TRUST_ANCHORS, anchors.as_str()),
        (ENV_IDENTITY_LOCAL_NAME, name),
        (ENV_IDENTITY_SVC_ADDR, "127.0.0.1:8080"),
        (ENV_IDENTITY_TOKEN_FILE, "/var/run/token"),
        (ENV_IDENTITY_MIN_REFRESH, "5s"),
        (
            ENV_STATIC_ENDPOINTS,
            "web.local:80=127.0.0.2:4143#web.ns.serviceaccount.identity.linkerd.cluster.local",
        ),
    ];
    let c = Config::from_strings(&env).unwrap();
    let id = c.identity.unwrap();
    assert_eq!(id.local_name, name);
    assert_eq!(id.min_refresh, Duration::from_secs(5));
    assert_eq!(id.max_refresh, Duration::from_secs(86400));
    assert_eq!(c.outbound.static_endpoints[0].1[0].1.as_deref(), Some(name));

    // A partial identity configuration names what is missing.
    let env = [
        (ENV_IDENTITY_LOCAL_NAME, name),
        (ENV_IDENTITY_TRUST_ANCHORS, anchors.as_str()),
    ];
    let err = Config::from_strings(&env).unwrap_err();
    assert_eq!(err.name, ENV_IDENTITY_SVC_ADDR);
}

#[test]
fn http1_to_meshed_endpoints_is_upgraded_unless_configured_off() {
    let c = Config::from_strings(&HashMap::<String, String>::new()).unwrap();
    assert!(c.outbound.upgrade_http1, "Linkerd's behaviour by default");
    let c = Config::from_strings(&[(ENV_OUTBOUND_UPGRADE_HTTP1, "false")]).unwrap();
    assert!(!c.outbound.upgrade_http1);
    let err = Config::from_strings(&[(ENV_OUTBOUND_UPGRADE_HTTP1, "h2")]).unwrap_err();
    assert_eq!(err.name, ENV_OUTBOUND_UPGRADE_HTTP1, "{err}");
    assert!(err.to_string().contains("expected true or false"), "{err}");
}
