//! A cluster on one machine, with hosts made of network namespaces: each host has its own
//! address on a bridge (and a delay on its link, `tc netem`), so NATS servers and Cloze nodes
//! talk over a network that a test can cut. Needs root (or passwordless sudo), `ip` and `tc`
//! (iproute2) and `nats-server`: `tests/install-deps.sh` installs them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Hosts in network namespaces, joined by a bridge in the test's own namespace (which reaches
/// each at its address). Removed on drop.
pub struct Hosts {
    tag: String,
    /// The first three octets of the hosts' /24.
    subnet: String,
    count: usize,
    sudo: bool,
}

fn run(sudo: bool, args: &[&str]) -> Result<(), String> {
    let mut command = if sudo {
        let mut command = Command::new("sudo");
        command.arg("-n").args(args);
        command
    } else {
        let mut command = Command::new(args[0]);
        command.args(&args[1..]);
        command
    };
    let output = command.output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Hosts {
    /// `count` hosts, each link delayed by `delay_ms` each way.
    pub fn create(count: usize, delay_ms: f64) -> Hosts {
        let root = unsafe_geteuid() == 0;
        let sudo = !root && run(true, &["true"]).is_ok();
        assert!(
            root || sudo,
            "the cluster tests make network namespaces: run them as root or with passwordless sudo"
        );
        let pid = std::process::id();
        let hosts = Hosts {
            tag: format!("cz{}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250),
            count,
            sudo,
        };
        let bridge = hosts.bridge();
        hosts.must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        hosts.must(&["ip", "addr", "add", &format!("{}.1/24", hosts.subnet), "dev", &bridge]);
        hosts.must(&["ip", "link", "set", &bridge, "up"]);
        for host in 1..=count {
            let (ns, veth) = (hosts.namespace(host), hosts.veth(host));
            hosts.must(&["ip", "netns", "add", &ns]);
            hosts.must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            hosts.must(&["ip", "link", "set", &veth, "master", &bridge]);
            hosts.must(&["ip", "link", "set", &veth, "up"]);
            let address = format!("{}/24", hosts.ip(host));
            hosts.must(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &address, "dev", "eth0"]);
            hosts.must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            hosts.must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            if delay_ms > 0.0 {
                let delay = format!("{delay_ms}ms");
                let netem = [
                    "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                    "netem", "delay", &delay,
                ];
                // Some kernels (small VMs) are built without netem: the hosts then talk at
                // the bridge's speed, which every check here also holds at.
                if let Err(error) = run(sudo, &netem) {
                    eprintln!("no link delay ({error})");
                }
            }
        }
        hosts
    }

    fn must(&self, args: &[&str]) {
        if let Err(error) = run(self.sudo, args) {
            panic!("making the test network: {error}");
        }
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn namespace(&self, host: usize) -> String {
        format!("{}h{host}", self.tag)
    }

    fn veth(&self, host: usize) -> String {
        format!("{}v{host}", self.tag)
    }

    /// The address of host `host` (from 1).
    pub fn ip(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 10 + host)
    }

    /// `program` to run on host `host`.
    pub fn command(&self, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(if self.sudo { "sudo" } else { "ip" });
        if self.sudo {
            command.args(["-n", "ip"]);
        }
        command.args(["netns", "exec", &self.namespace(host)]).arg(program);
        command
    }

    /// Takes host `host` off the network (its link goes down), or puts it back.
    pub fn cut(&self, host: usize) {
        self.must(&["ip", "link", "set", &self.veth(host), "down"]);
    }

    pub fn heal(&self, host: usize) {
        self.must(&["ip", "link", "set", &self.veth(host), "up"]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in 1..=self.count {
            let _ = run(self.sudo, &["ip", "netns", "pids", &self.namespace(host)]);
            let _ = run(self.sudo, &["ip", "link", "del", &self.veth(host)]);
            let _ = run(self.sudo, &["ip", "netns", "del", &self.namespace(host)]);
        }
        let _ = run(self.sudo, &["ip", "link", "del", &self.bridge()]);
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// POSTs a JSON body and reads the JSON answer; a status other than 200 or 201 is an error
/// with the body. Two minutes at most: a cluster test's waits are bounded.
pub fn post(url: &str, body: &str) -> Result<Value, String> {
    let mut response = ureq::post(url)
        .header("Content-Type", "application/json")
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .send(body)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if status != 200 && status != 201 {
        return Err(format!("{url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}: {text}"))
}

/// A child process killed on drop, its output in a log file.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Takes charge of a child already started, its output already going to `log`.
    pub fn adopt(child: Child, log: PathBuf) -> Process {
        Process { child, log }
    }

    /// Starts `command` with its output going to `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Process { child, log }
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three hosts or more, each with a NATS server of one JetStream cluster; Cloze nodes on
/// them; a router on the test's own host (loopback), which reaches them through the bridge.
pub struct Cluster {
    pub hosts: Hosts,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    nats_hosts: usize,
    nats: Vec<Option<Process>>,
    nodes: Vec<Option<Process>>,
    router: Option<Process>,
    pub router_url: String,
}

impl Cluster {
    /// `hosts` hosts with a NATS server on each of the first `nats_hosts` and a node on each of
    /// the first `nodes`, and a router. `bin` is the `cloze` binary.
    pub fn start(
        bin: &Path,
        hosts: usize,
        nats_hosts: usize,
        nodes: usize,
        delay_ms: f64,
    ) -> Cluster {
        let mut cluster = Cluster {
            hosts: Hosts::create(hosts, delay_ms),
            dir: tempfile::tempdir().expect("temp dir"),
            bin: bin.to_path_buf(),
            nats_hosts,
            nats: (0..hosts).map(|_| None).collect(),
            nodes: (0..hosts).map(|_| None).collect(),
            router: None,
            router_url: String::new(),
        };
        for host in 1..=nats_hosts {
            cluster.start_nats(host);
        }
        cluster.wait_for_jetstream();
        for host in 1..=nodes {
            cluster.start_node(host);
        }
        cluster.start_router();
        cluster.wait_for_nodes(nodes);
        cluster
    }

    /// NATS server `host`'s configuration: a JetStream cluster member that notices a lost
    /// route in seconds.
    fn start_nats(&mut self, host: usize) {
        let ip = self.hosts.ip(host);
        let routes: Vec<String> = (1..=self.nats_hosts)
            .filter(|h| *h != host)
            .map(|h| format!("\"nats-route://{}:6222\"", self.hosts.ip(h)))
            .collect();
        let store = self.dir.path().join(format!("nats{host}"));
        let config = format!(
            "server_name: nats{host}\nlisten: \"{ip}:4222\"\nhttp: \"{ip}:8222\"\n\
             ping_interval: \"1s\"\nping_max: 3\n\
             jetstream {{ store_dir: \"{}\" }}\n\
             cluster {{ name: cloze, listen: \"{ip}:6222\", routes: [{}] }}\n",
            store.display(),
            routes.join(", ")
        );
        let path = self.dir.path().join(format!("nats{host}.conf"));
        std::fs::write(&path, config).expect("writes");
        let mut command = self.hosts.command(host, "nats-server");
        command.arg("-c").arg(&path);
        let log = self.dir.path().join(format!("nats{host}.log"));
        self.nats[host - 1] = Some(Process::spawn(command, log));
    }

    /// Comma-separated NATS URLs, `first` host's server first.
    pub fn nats_urls(&self, first: usize) -> String {
        let mut hosts: Vec<usize> = (1..=self.nats_hosts).collect();
        hosts.sort_by_key(|h| *h != first);
        hosts
            .iter()
            .map(|h| format!("nats://{}:4222", self.hosts.ip(*h)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_for_jetstream(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = ureq::get(&format!("http://{}:8222/jsz", self.hosts.ip(1)))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_string))
                .filter(|leader| !leader.is_empty());
            if leader.is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "no JetStream leader after 60 s: {}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts (or restarts) the node on `host`, named `n{host}`, with its data folder.
    pub fn start_node(&mut self, host: usize) {
        let data = self.dir.path().join(format!("node{host}"));
        let mut command = self.hosts.command(host, &self.bin);
        command
            .env("RUST_LOG", "info,hnsw_rs=warn,async_nats=warn")
            .arg("--data-dir")
            .arg(&data)
            .args(["node", "--id", &format!("n{host}"), "--nats", &self.nats_urls(host)]);
        let log = self.dir.path().join(format!("node{host}.{}.log", now_millis()));
        self.nodes[host - 1] = Some(Process::spawn(command, log));
    }

    /// SIGKILLs the node on `host`.
    pub fn kill_node(&mut self, host: usize) {
        if let Some(mut node) = self.nodes[host - 1].take() {
            node.kill();
        }
    }

    pub fn kill_nats(&mut self, host: usize) {
        if let Some(mut nats) = self.nats[host - 1].take() {
            nats.kill();
        }
    }

    pub fn restart_nats(&mut self, host: usize) {
        self.kill_nats(host);
        self.start_nats(host);
    }

    fn start_router(&mut self) {
        let (router, url) = start_router(&self.bin, &self.nats_urls(1), &[], self.dir.path());
        self.router_url = url;
        self.router = Some(router);
    }

    /// Waits until `count` nodes are live.
    pub fn wait_for_nodes(&self, count: usize) {
        wait_for_live_nodes(&self.router_url, count, || self.logs());
    }

    /// `GET /_cluster`.
    pub fn state(&self) -> Option<Value> {
        ureq::get(&format!("{}/_cluster", self.router_url)).call().ok()?.body_mut().read_json().ok()
    }

    /// `GET /_cluster?checksums=true`.
    pub fn state_with_checksums(&self) -> Value {
        ureq::get(&format!("{}/_cluster?checksums=true", self.router_url))
            .call()
            .expect("GET /_cluster")
            .body_mut()
            .read_json()
            .expect("JSON")
    }

    /// Waits until every replica of `collection` is ready and the replicas of each partition
    /// agree on their log position; returns the state.
    pub fn wait_until_caught_up(&self, collection: &str, patience: Duration) -> Value {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(state) = self.state() {
                if caught_up(&state, collection) {
                    return state;
                }
                assert!(
                    Instant::now() < deadline,
                    "not caught up in {patience:?}: {state:#}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs.push_str(&format!("\n== {}\n", path.display()));
            tail.iter().rev().for_each(|l| {
                logs.push_str(l);
                logs.push('\n');
            });
        }
        logs
    }
}

/// Starts `cloze router` on loopback (`bin` is the `cloze` binary, `extra` more arguments), its
/// log in `dir`; returns it and its URL.
pub fn start_router(bin: &Path, nats: &str, extra: &[&str], dir: &Path) -> (Process, String) {
    let mut command = Command::new(bin);
    command
        .env("RUST_LOG", "info,async_nats=warn")
        .args(["router", "--bind", "127.0.0.1:0", "--nats", nats])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let log = dir.join("router.log");
    command.stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = command.spawn().expect("starts the router");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reads the router's address");
    let address = line.trim().strip_prefix("listening on ").unwrap_or_else(|| {
        panic!("the router said {line:?}: {}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    let url = address.to_string();
    (Process { child, log }, url)
}

/// Waits until `count` nodes are live in the router at `router`; `logs` says why not.
pub fn wait_for_live_nodes(router: &str, count: usize, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = ureq::get(&format!("{router}/_cluster"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
            .map_or(0, |state| {
                state["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|n| n["live"] == true).count())
            });
        if live >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{live} of {count} nodes live after 60 s: {}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every replica of `collection` ready, and each partition's replicas at one log position.
pub fn caught_up(state: &Value, collection: &str) -> bool {
    let Some(found) =
        state["collections"].as_array().and_then(|c| c.iter().find(|c| c["name"] == collection))
    else {
        return false;
    };
    found["assignment"].as_array().is_some_and(|partitions| {
        partitions.iter().all(|partition| {
            let replicas = partition["replicas"].as_array().cloned().unwrap_or_default();
            let position = &replicas[0]["log_position"];
            !replicas.is_empty()
                && replicas.iter().all(|r| r["state"] == "ready" && r["log_position"] == *position)
        })
    })
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.router.take();
        self.nodes.iter_mut().for_each(|n| drop(n.take()));
        self.nats.iter_mut().for_each(|n| drop(n.take()));
        if std::env::var_os("CLOZE_KEEP_CLUSTER_LOGS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("cluster logs kept in {}", dir.keep().display());
        }
    }
}
