use super::*;

fn parse(args: &[&str]) -> Result<Args, UsageError> {
    match Args::parse(args.iter().copied())? {
        Parsed::Run(a) => Ok(a),
        Parsed::Help => panic!("unexpected help"),
    }
}

fn lines(cmds: &[Cmd]) -> Vec<String> {
    cmds.iter().map(|c| c.join(" ")).collect()
}

fn ports(v: &str) -> Vec<PortRange> {
    args::parse_ports(v).unwrap()
}

/// Exactly what the injector passes (linkerd-proxy-api.md section 6).
const INJECTOR: &[&str] = &[
    "--incoming-proxy-port",
    "4143",
    "--outgoing-proxy-port",
    "4140",
    "--proxy-uid",
    "2102",
    "--inbound-ports-to-ignore",
    "4190,4191,4567,4568",
    "--outbound-ports-to-ignore",
    "4567,4568",
    "--subnets-to-ignore",
    "10.0.0.0/8,fd00::/8",
    "--firewall-bin-path",
    "iptables-nft",
    "--firewall-save-bin-path",
    "iptables-nft-save",
    "--ipv6=false",
];

#[test]
fn parses_the_injector_arguments() {
    let a = parse(INJECTOR).unwrap();
    assert_eq!(
        a,
        Args {
            incoming_proxy_port: 4143,
            outgoing_proxy_port: 4140,
            proxy_uid: 2102,
            proxy_gid: None,
            inbound_ports_to_ignore: ports("4190,4191,4567,4568"),
            outbound_ports_to_ignore: ports("4567,4568"),
            ports_to_redirect: vec![],
            subnets_to_ignore: args::parse_subnets("10.0.0.0/8,fd00::/8").unwrap(),
            firewall_bin_path: Some("iptables-nft".into()),
            firewall_save_bin_path: Some("iptables-nft-save".into()),
            ipv6: false,
            cleanup: false,
            dry_run: false,
        }
    );
}

#[test]
fn defaults_are_linkerds() {
    let a = parse(&[]).unwrap();
    assert_eq!(a, Args::default());
    assert_eq!(
        (a.incoming_proxy_port, a.outgoing_proxy_port, a.proxy_uid),
        (4143, 4140, 2102)
    );
    assert!(a.ipv6 && !a.cleanup && !a.dry_run);
}

#[test]
fn flag_syntax() {
    // --flag=value as well as --flag value; empty lists; list flags accumulate.
    let a = parse(&[
        "--proxy-uid=7",
        "--proxy-gid",
        "8",
        "--outbound-ports-to-ignore",
        "",
        "--inbound-ports-to-ignore=1,2",
        "--inbound-ports-to-ignore",
        " 3 , 4000-4010 ,2",
        "--ports-to-redirect=80,443",
        "--cleanup",
        "--dry-run=true",
        "--log-level",
        "debug",
        "--log-format=json",
    ])
    .unwrap();
    assert_eq!((a.proxy_uid, a.proxy_gid), (7, Some(8)));
    assert!(a.outbound_ports_to_ignore.is_empty());
    let shown: Vec<_> = a
        .inbound_ports_to_ignore
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(shown, ["1", "2", "3", "4000:4010"]);
    assert_eq!(a.ports_to_redirect, ports("80,443"));
    assert!(a.cleanup && a.dry_run);

    for (arg, ipv6) in [
        ("--ipv6", true),
        ("--ipv6=true", true),
        ("--ipv6=false", false),
        ("--ipv6=0", false),
        ("--ipv6=T", true),
    ] {
        assert_eq!(parse(&[arg]).unwrap().ipv6, ipv6, "{arg}");
    }
    assert_eq!(Args::parse(["--help"]), Ok(Parsed::Help));
    assert_eq!(Args::parse(["--dry-run", "-h"]), Ok(Parsed::Help));
}

#[test]
fn rejects_bad_arguments_naming_the_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--nope", "1"], "--nope", "unknown flag"),
        (&["--simulate"], "--simulate", "unknown flag"),
        (&["--proxy-uid"], "--proxy-uid", "needs a value"),
        (&["--proxy-uid", "root"], "--proxy-uid", "not a numeric"),
        (
            &["--incoming-proxy-port", "0"],
            "--incoming-proxy-port",
            "not a port",
        ),
        (
            &["--incoming-proxy-port=70000"],
            "--incoming-proxy-port",
            "not a port",
        ),
        (
            &["--inbound-ports-to-ignore", "9-3"],
            "--inbound-ports-to-ignore",
            "backwards",
        ),
        (
            &["--outbound-ports-to-ignore", "25,x"],
            "--outbound-ports-to-ignore",
            "not a port",
        ),
        (
            &["--subnets-to-ignore", "10.0.0.0/33"],
            "--subnets-to-ignore",
            "prefix must be 0-32",
        ),
        (
            &["--subnets-to-ignore", "fd00::/129"],
            "--subnets-to-ignore",
            "0-128",
        ),
        (
            &["--subnets-to-ignore", "example.com/8"],
            "--subnets-to-ignore",
            "not a CIDR",
        ),
        (&["--ipv6=maybe"], "--ipv6", "not a boolean"),
        // A boolean never takes the next word: `--ipv6 false` is a stray argument.
        (&["--ipv6", "false"], "false", "unexpected argument"),
        (&["init"], "init", "unexpected argument"),
        (
            &["--firewall-bin-path="],
            "--firewall-bin-path",
            "must not be empty",
        ),
        (
            &["--incoming-proxy-port", "4140"],
            "--outgoing-proxy-port",
            "must differ",
        ),
    ];
    for (args, flag, reason) in cases {
        let e = parse(args).expect_err(&format!("{args:?} must be rejected"));
        assert_eq!(e.flag, *flag, "{args:?}: {e}");
        assert!(e.reason.contains(reason), "{args:?}: {e}");
    }
}

#[test]
fn subnets_keep_their_family() {
    let s = args::parse_subnets("10.1.0.0/16, 192.168.1.7 ,fd00::/8,::1").unwrap();
    let shown: Vec<_> = s.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        shown,
        ["10.1.0.0/16", "192.168.1.7/32", "fd00::/8", "::1/128"]
    );
}

#[test]
fn installs_linkerds_rules_on_an_empty_table() {
    let a = parse(INJECTOR).unwrap();
    let cmds = install(&a, Family::V4, &NatTable::default());
    let c = "-m comment --comment proxy-init";
    assert_eq!(
        lines(&cmds),
        [
            "-t nat -N PROXY_INIT_REDIRECT".to_string(),
            format!(
                "-t nat -A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191,4567,4568 \
                 {c}/ignore-port-4190,4191,4567,4568 -j RETURN"
            ),
            format!(
                "-t nat -A PROXY_INIT_REDIRECT -s 10.0.0.0/8 {c}/ignore-subnet-10.0.0.0/8 -j RETURN"
            ),
            format!(
                "-t nat -A PROXY_INIT_REDIRECT -p tcp {c}/redirect-all-incoming-to-proxy-port \
                 -j REDIRECT --to-port 4143"
            ),
            format!(
                "-t nat -A PREROUTING {c}/install-proxy-init-prerouting -j PROXY_INIT_REDIRECT"
            ),
            "-t nat -N PROXY_INIT_OUTPUT".to_string(),
            format!(
                "-t nat -A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 {c}/ignore-proxy-user-id \
                 -j RETURN"
            ),
            format!("-t nat -A PROXY_INIT_OUTPUT -o lo {c}/ignore-loopback -j RETURN"),
            format!(
                "-t nat -A PROXY_INIT_OUTPUT -p tcp -m multiport --dports 4567,4568 \
                 {c}/ignore-port-4567,4568 -j RETURN"
            ),
            format!(
                "-t nat -A PROXY_INIT_OUTPUT -p tcp {c}/redirect-all-outgoing-to-proxy-port \
                 -j REDIRECT --to-port 4140"
            ),
            format!("-t nat -A OUTPUT {c}/install-proxy-init-output -j PROXY_INIT_OUTPUT"),
        ]
    );
    // No UDP anywhere: only TCP is ever redirected.
    assert!(cmds.iter().flatten().all(|w| w != "udp"));
}

#[test]
fn ipv6_gets_only_ipv6_subnets() {
    let a = parse(&[
        "--subnets-to-ignore",
        "10.0.0.0/8,fd00::/8,192.168.0.0/16,fe80::1",
    ])
    .unwrap();
    let subnets = |f| {
        install(&a, f, &NatTable::default())
            .into_iter()
            .filter_map(|c| Some(c[c.iter().position(|w| w == "-s")? + 1].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(subnets(Family::V4), ["10.0.0.0/8", "192.168.0.0/16"]);
    assert_eq!(subnets(Family::V6), ["fd00::/8", "fe80::1/128"]);
}

#[test]
fn gid_and_listed_mode() {
    let a = parse(&["--proxy-gid", "2103", "--ports-to-redirect", "80,8080-8090"]).unwrap();
    let l = lines(&install(&a, Family::V4, &NatTable::default()));
    assert!(
        l.contains(
            &"-t nat -A PROXY_INIT_OUTPUT -m owner --gid-owner 2103 -m comment --comment \
          proxy-init/ignore-proxy-group-id -j RETURN"
                .to_string()
        )
    );
    // The gid rule follows the uid rule and precedes loopback.
    let at = |needle: &str| l.iter().position(|x| x.contains(needle)).unwrap();
    assert!(at("--uid-owner") < at("--gid-owner") && at("--gid-owner") < at("-o lo"));
    let redirects: Vec<_> = l
        .iter()
        .filter(|x| x.contains("REDIRECT --to-port 4143"))
        .collect();
    assert_eq!(
        redirects,
        [
            "-t nat -A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 80,8080:8090 -m comment \
          --comment proxy-init/redirect-port-80,8080:8090 -j REDIRECT --to-port 4143"
        ]
    );
}

#[test]
fn multiport_rules_hold_at_most_15_ports() {
    // 20 single ports and 3 ranges (weight 2 each): 26 slots -> 15 + 11.
    let list: Vec<String> = (1..=20)
        .map(|p| p.to_string())
        .chain(["100-110", "200-210", "300-310"].map(String::from))
        .collect();
    let a = parse(&["--inbound-ports-to-ignore", &list.join(",")]).unwrap();
    let dports: Vec<String> = install(&a, Family::V4, &NatTable::default())
        .into_iter()
        .filter(|c| {
            c.contains(&"PROXY_INIT_REDIRECT".to_string()) && c.contains(&"RETURN".to_string())
        })
        .map(|c| c[c.iter().position(|w| w == "--dports").unwrap() + 1].clone())
        .collect();
    assert_eq!(
        dports,
        [
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "16,17,18,19,20,100:110,200:210,300:310",
        ]
    );
    for d in &dports {
        let weight: usize = d
            .split(',')
            .map(|p| if p.contains(':') { 2 } else { 1 })
            .sum();
        assert!(weight <= 15, "{d}");
    }
}

/// `iptables-nft-save -t nat` after one install, with counters and a foreign rule.
const INSTALLED: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Tue Nov 24 19:00:00 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:PROXY_INIT_OUTPUT - [0:0]
:PROXY_INIT_REDIRECT - [0:0]
-A PREROUTING -m comment --comment "proxy-init/install-proxy-init-prerouting" -j PROXY_INIT_REDIRECT
-A OUTPUT -d 10.96.0.1/32 -m comment --comment "someone else's \"rule\"" -j ACCEPT
-A OUTPUT -m comment --comment "proxy-init/install-proxy-init-output" -j PROXY_INIT_OUTPUT
-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -m comment --comment "proxy-init/ignore-proxy-user-id" -j RETURN
-A PROXY_INIT_OUTPUT -p tcp -m comment --comment "proxy-init/redirect-all-outgoing-to-proxy-port" -j REDIRECT --to-ports 4140
-A PROXY_INIT_REDIRECT -p tcp -m comment --comment "proxy-init/redirect-all-incoming-to-proxy-port" -j REDIRECT --to-ports 4143
COMMIT
# Completed on Tue Nov 24 19:00:00 2026
"#;

#[test]
fn reinstall_flushes_and_keeps_the_jumps() {
    let table = NatTable::parse(INSTALLED).unwrap();
    assert!(table.has_chain(REDIRECT_CHAIN) && table.has_chain(OUTPUT_CHAIN));
    let l = lines(&install(&Args::default(), Family::V4, &table));
    assert_eq!(l[0], "-t nat -F PROXY_INIT_REDIRECT");
    assert!(l.contains(&"-t nat -F PROXY_INIT_OUTPUT".to_string()));
    assert!(!l.iter().any(|x| x.contains(" -N ")));
    assert!(
        !l.iter()
            .any(|x| x.contains("-A PREROUTING") || x.contains("-A OUTPUT ")),
        "jumps already present must not be added again: {l:#?}"
    );
    // Only one chain present: that one is flushed, the other created, each jump added if missing.
    let half = NatTable::parse(":PROXY_INIT_OUTPUT - [0:0]\n").unwrap();
    let l = lines(&install(&Args::default(), Family::V4, &half));
    assert!(l.contains(&"-t nat -N PROXY_INIT_REDIRECT".to_string()));
    assert!(l.contains(&"-t nat -F PROXY_INIT_OUTPUT".to_string()));
    assert_eq!(
        l.iter()
            .filter(|x| x.contains("install-proxy-init"))
            .count(),
        2
    );
}

#[test]
fn cleanup_deletes_the_saved_jumps_then_the_chains() {
    let table = NatTable::parse(INSTALLED).unwrap();
    let cmds = cleanup(&table);
    assert_eq!(
        lines(&cmds),
        [
            "-t nat -D PREROUTING -m comment --comment proxy-init/install-proxy-init-prerouting -j PROXY_INIT_REDIRECT",
            "-t nat -F PROXY_INIT_REDIRECT",
            "-t nat -X PROXY_INIT_REDIRECT",
            "-t nat -D OUTPUT -m comment --comment proxy-init/install-proxy-init-output -j PROXY_INIT_OUTPUT",
            "-t nat -F PROXY_INIT_OUTPUT",
            "-t nat -X PROXY_INIT_OUTPUT",
        ]
    );
    assert!(cleanup(&NatTable::default()).is_empty(), "nothing to clean");
}

#[test]
fn save_lines_are_split_like_a_shell() {
    let t = NatTable::parse(
        "-A OUTPUT -m comment --comment \"a b \\\"c\\\" \\\\d\" -j PROXY_INIT_OUTPUT\n",
    )
    .unwrap();
    let cmds = cleanup(&t);
    assert_eq!(
        cmds[0],
        [
            "-t",
            "nat",
            "-D",
            "OUTPUT",
            "-m",
            "comment",
            "--comment",
            r#"a b "c" \d"#,
            "-j",
            "PROXY_INIT_OUTPUT"
        ]
    );
    assert!(NatTable::parse("-A OUTPUT -m comment --comment \"open").is_err());
}

#[test]
fn ip6tables_counterparts() {
    for (v4, v6) in [
        ("iptables", "ip6tables"),
        ("iptables-nft", "ip6tables-nft"),
        ("iptables-nft-save", "ip6tables-nft-save"),
        (
            "/usr/sbin/iptables-legacy-save",
            "/usr/sbin/ip6tables-legacy-save",
        ),
    ] {
        assert_eq!(ip6tables(v4, "--firewall-bin-path").unwrap(), v6);
    }
    let e = ip6tables("/opt/nft-wrapper", "--firewall-bin-path").unwrap_err();
    assert_eq!(e.flag, "--firewall-bin-path");
    assert!(e.reason.contains("--ipv6=false"), "{e}");
}

#[test]
fn commands_print_as_shell_words() {
    assert_eq!(
        shell_words(
            "iptables",
            &["-w", "-t", "nat", "--comment", "proxy-init/x y", "it's"]
        ),
        r#"iptables -w -t nat --comment 'proxy-init/x y' 'it'\''s'"#
    );
}

#[test]
fn dry_run_prints_without_a_firewall() {
    // Paths that cannot run: the dry run falls back to an empty table and succeeds.
    let a = parse(&[
        "--dry-run",
        "--firewall-bin-path",
        "/nonexistent/iptables",
        "--ipv6=false",
    ])
    .unwrap();
    run(&a).unwrap();
    // Not a dry run: the same is an error naming the command.
    let a = Args {
        dry_run: false,
        ..a
    };
    let e = run(&a).unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/iptables-save -t nat") && e.contains("could not run"),
        "{e}"
    );
}
