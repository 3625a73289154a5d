//! A network namespace of a test's own, joined to this host by a veth
//! pair (iproute2; root): a member in it reaches the host's side through
//! the pair, and a blackhole route inside it cuts one address off, the way
//! a partition does (packets vanish; connections hang, they are not reset).

use std::process::Command;

pub struct Netns {
    pub name: String,
    host_if: String,
    /// The /24 of the pair: `.1` and `.3` on the host's side, `.2` inside.
    net: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        // apart from other test processes' (by pid) and from this one's
        // other namespaces (a count)
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = (pid % 1_000) * 10 + n % 10;
        let third = 1 + (pid * 7 + n) % 250;
        let ns = Netns {
            name: format!("tk-test-{tag}"),
            host_if: format!("tkh{tag}"),
            net: format!("10.201.{third}"),
        };
        let inside = format!("tkn{tag}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", ns.net),
            "dev",
            &ns.host_if,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}.3/24", ns.net),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let exec = ["netns", "exec", &ns.name, "ip"];
        let inside_ip = format!("{}.2/24", ns.net);
        ip(&[&exec[..], &["addr", "add", &inside_ip, "dev", &inside]].concat());
        ip(&[&exec[..], &["link", "set", &inside, "up"]].concat());
        ip(&[&exec[..], &["link", "set", "lo", "up"]].concat());
        ns
    }

    /// An address of the host's side.
    pub fn host(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// The address inside.
    pub fn inside(&self) -> String {
        format!("{}.2", self.net)
    }

    /// A command run inside: its prefix.
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Packets from inside to `addr` vanish from now on.
    pub fn cut(&self, addr: &str) {
        self.blackhole("add", addr);
    }

    pub fn heal(&self, addr: &str) {
        self.blackhole("del", addr);
    }

    fn blackhole(&self, verb: &str, addr: &str) {
        let to = format!("{addr}/32");
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "route",
            verb,
            "blackhole",
            &to,
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // (gone with the namespace, usually: its peer was inside)
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
