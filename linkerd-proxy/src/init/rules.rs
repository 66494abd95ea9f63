//! The nat rules as data: what the table holds now, and the iptables argument lists that bring
//! it to the state we want. No process is run here.

use super::args::{Args, PortRange};
use std::collections::HashSet;

pub const REDIRECT_CHAIN: &str = "PROXY_INIT_REDIRECT";
pub const OUTPUT_CHAIN: &str = "PROXY_INIT_OUTPUT";

/// `multiport` matches at most 15 ports per rule (a range counts as two).
const MULTIPORT_MAX: usize = 15;

/// One iptables invocation, without the binary: `["-t", "nat", "-A", ...]`.
pub type Cmd = Vec<String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What `iptables-save -t nat` printed: the chains and every rule, split into arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTable {
    chains: HashSet<String>,
    /// `-A CHAIN ...` lines as argument lists, in order.
    rules: Vec<Vec<String>>,
}

// === impl Family ===

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

// === impl NatTable ===

impl NatTable {
    /// Parses `iptables-save -t nat` output. Lines other than chain declarations and rules
    /// (`*nat`, `COMMIT`, comments) are ignored.
    pub fn parse(save: &str) -> Result<Self, String> {
        let mut table = NatTable::default();
        for line in save.lines().map(str::trim) {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                table.rules.push(split_save_line(line)?);
            }
        }
        Ok(table)
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains(chain)
    }

    /// The rules of `parent` that jump to `chain`.
    fn jumps<'a>(&'a self, parent: &'a str, chain: &'a str) -> impl Iterator<Item = &'a [String]> {
        self.rules
            .iter()
            .filter(move |r| r.get(1).is_some_and(|c| c == parent) && target(r) == Some(chain))
            .map(Vec::as_slice)
    }
}

/// The rule's `-j` target.
fn target(rule: &[String]) -> Option<&str> {
    rule.windows(2)
        .find(|w| w[0] == "-j" || w[0] == "--jump")
        .map(|w| w[1].as_str())
}

/// Splits an iptables-save rule into arguments: words separated by spaces, where a double-quoted
/// word (comments) may contain spaces and backslash-escaped quotes.
fn split_save_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated escape in {line:?}")),
                    },
                    Some(c) => word.push(c),
                    None => return Err(format!("unterminated quote in {line:?}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

// === the plans ===

/// The commands that install our chains for one family, given what the table holds now:
/// existing chains are flushed and refilled, jumps are added only when missing.
pub fn install(args: &Args, family: Family, table: &NatTable) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    let inbound = inbound_rules(args, family);
    let outbound = outbound_rules(args);
    for (chain, parent, rules, what) in [
        (REDIRECT_CHAIN, "PREROUTING", inbound, "prerouting"),
        (OUTPUT_CHAIN, "OUTPUT", outbound, "output"),
    ] {
        let op = if table.has_chain(chain) { "-F" } else { "-N" };
        cmds.push(nat([op, chain]));
        cmds.extend(rules);
        if table.jumps(parent, chain).next().is_none() {
            let comment = format!("install-proxy-init-{what}");
            cmds.push(rule(parent, &[], &comment, &["-j", chain]));
        }
    }
    cmds
}

/// The commands that remove every trace of our chains: the jumps first, then the chains.
pub fn cleanup(table: &NatTable) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    for (chain, parent) in [(REDIRECT_CHAIN, "PREROUTING"), (OUTPUT_CHAIN, "OUTPUT")] {
        for jump in table.jumps(parent, chain) {
            // The saved rule verbatim, `-A` turned into `-D`: deletes exactly that rule.
            let mut cmd = nat(["-D"]);
            cmd.extend(jump.iter().skip(1).cloned());
            cmds.push(cmd);
        }
        if table.has_chain(chain) {
            cmds.push(nat(["-F", chain]));
            cmds.push(nat(["-X", chain]));
        }
    }
    cmds
}

/// `PROXY_INIT_REDIRECT`: ignored ports and subnets return; the rest of TCP goes to the inbound
/// proxy port.
fn inbound_rules(args: &Args, family: Family) -> Vec<Cmd> {
    let chain = REDIRECT_CHAIN;
    let mut cmds = ignore_ports(chain, &args.inbound_ports_to_ignore);
    for subnet in &args.subnets_to_ignore {
        if subnet.addr.is_ipv4() == (family == Family::V4) {
            let s = subnet.to_string();
            let comment = format!("ignore-subnet-{s}");
            cmds.push(rule(chain, &["-s", &s], &comment, &["-j", "RETURN"]));
        }
    }
    let port = args.incoming_proxy_port.to_string();
    let redirect = ["-j", "REDIRECT", "--to-port", port.as_str()];
    if args.ports_to_redirect.is_empty() {
        let comment = "redirect-all-incoming-to-proxy-port";
        cmds.push(rule(chain, &["-p", "tcp"], comment, &redirect));
    } else {
        for ports in multiport_lists(&args.ports_to_redirect) {
            let comment = format!("redirect-port-{ports}");
            let m = ["-p", "tcp", "-m", "multiport", "--dports", ports.as_str()];
            cmds.push(rule(chain, &m, &comment, &redirect));
        }
    }
    cmds
}

/// `PROXY_INIT_OUTPUT`: the proxy's own traffic, loopback and ignored ports return; the rest of
/// TCP goes to the outbound proxy port.
fn outbound_rules(args: &Args) -> Vec<Cmd> {
    let chain = OUTPUT_CHAIN;
    let ret = ["-j", "RETURN"];
    let uid = args.proxy_uid.to_string();
    let mut cmds = vec![rule(
        chain,
        &["-m", "owner", "--uid-owner", &uid],
        "ignore-proxy-user-id",
        &ret,
    )];
    if let Some(gid) = args.proxy_gid {
        let gid = gid.to_string();
        let m = ["-m", "owner", "--gid-owner", gid.as_str()];
        cmds.push(rule(chain, &m, "ignore-proxy-group-id", &ret));
    }
    cmds.push(rule(chain, &["-o", "lo"], "ignore-loopback", &ret));
    cmds.extend(ignore_ports(chain, &args.outbound_ports_to_ignore));
    let port = args.outgoing_proxy_port.to_string();
    cmds.push(rule(
        chain,
        &["-p", "tcp"],
        "redirect-all-outgoing-to-proxy-port",
        &["-j", "REDIRECT", "--to-port", &port],
    ));
    cmds
}

fn ignore_ports(chain: &str, ports: &[PortRange]) -> Vec<Cmd> {
    multiport_lists(ports)
        .into_iter()
        .map(|ports| {
            let comment = format!("ignore-port-{ports}");
            let m = ["-p", "tcp", "-m", "multiport", "--dports", ports.as_str()];
            rule(chain, &m, &comment, &["-j", "RETURN"])
        })
        .collect()
}

/// Ports as `multiport --dports` values, each within the 15-port limit.
fn multiport_lists(ports: &[PortRange]) -> Vec<String> {
    let mut lists: Vec<(usize, String)> = Vec::new();
    for p in ports {
        match lists.last_mut() {
            Some((weight, list)) if *weight + p.weight() <= MULTIPORT_MAX => {
                *weight += p.weight();
                list.push(',');
                list.push_str(&p.to_string());
            }
            _ => lists.push((p.weight(), p.to_string())),
        }
    }
    lists.into_iter().map(|(_, l)| l).collect()
}

/// `-t nat -A <chain> <matches> -m comment --comment proxy-init/<comment> <action>`.
fn rule(chain: &str, matches: &[&str], comment: &str, action: &[&str]) -> Cmd {
    let mut cmd = nat(["-A", chain]);
    cmd.extend(matches.iter().map(|s| s.to_string()));
    cmd.extend(["-m", "comment", "--comment"].map(String::from));
    cmd.push(format!("proxy-init/{comment}"));
    cmd.extend(action.iter().map(|s| s.to_string()));
    cmd
}

fn nat<const N: usize>(rest: [&str; N]) -> Cmd {
    let mut cmd = vec!["-t".to_string(), "nat".to_string()];
    cmd.extend(rest.map(String::from));
    cmd
}
