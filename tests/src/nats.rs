//! A three-node NATS cluster with JetStream and its MQTT listener, on loopback, for the broker
//! cluster tests: each node with its own store in the test's directory, routes to the others,
//! and an MQTT port. Debian's `nats-server` (2.9); the test command installs it.
//!
//! The MQTT settings are the ones docs/operations.md explains: the MQTT streams (sessions,
//! retained messages, QoS 1 messages) replicated on all three nodes (NATS's default), so a
//! node's death loses neither retained state nor the cluster's MQTT; QoS 1 consumers in memory
//! (`consumer_memory_storage`), which a connect storm needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Proc, free_port, run, wait_until};

/// One node of a [`NatsCluster`].
#[derive(Debug)]
pub struct NatsNode {
    pub name: String,
    /// The node's MQTT listener.
    pub mqtt_port: u16,
    /// The node's monitoring endpoint (HTTP), which lists its clients.
    pub http_port: u16,
    /// None once killed.
    proc: std::sync::Mutex<Option<Proc>>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }
}

/// Three clustered `nats-server` nodes; every node is killed when this drops.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

/// The `nats-server` binary.
pub fn nats_server() -> PathBuf {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "nats-server is not installed (the test command installs it: apt-get install nats-server)"
    );
}

impl NatsCluster {
    /// Starts three nodes (`n1`…`n3`) with their stores and logs under `dir`, and waits until
    /// each node's MQTT listener takes a client and the cluster carries a retained message
    /// from every node to every other.
    pub fn start(dir: &Path) -> NatsCluster {
        let ports: Vec<(u16, u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, route, _, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, route, mqtt, http))| {
                let name = format!("n{}", i + 1);
                let store = dir.join(format!("nats-{name}"));
                std::fs::create_dir_all(&store).unwrap();
                let conf = dir.join(format!("nats-{name}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "server_name: {name}\n\
                         listen: \"127.0.0.1:{client}\"\n\
                         http: \"127.0.0.1:{http}\"\n\
                         jetstream {{ store_dir: \"{store}\" }}\n\
                         cluster {{\n  name: cuntong\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n\
                         mqtt {{\n  listen: \"127.0.0.1:{mqtt}\"\n  consumer_memory_storage: true\n}}\n",
                        store = store.display()
                    ),
                )
                .unwrap();
                let proc = Proc::spawn(
                    &nats_server(),
                    &["-c", conf.to_str().unwrap()],
                    dir.join(format!("nats-{name}.log")),
                );
                NatsNode {
                    name,
                    mqtt_port: mqtt,
                    http_port: http,
                    proc: std::sync::Mutex::new(Some(proc)),
                }
            })
            .collect();
        let cluster = NatsCluster { nodes };
        cluster.wait_formed();
        cluster
    }

    /// Waits (bounded) until a retained message published on each node reads back on the
    /// others: the routes are up, JetStream has its leaders and the MQTT streams exist.
    fn wait_formed(&self) {
        for n in &self.nodes {
            let port = n.mqtt_port;
            let up = wait_until(Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(up, "{}: MQTT port did not open:\n{}", n.name, self.log(n));
        }
        for (i, from) in self.nodes.iter().enumerate() {
            let topic = format!("cuntong-test/formed/{}", from.name);
            let published = wait_until(Duration::from_secs(60), || {
                mqtt_publish_retained(from.mqtt_port, &topic, "up")
            });
            assert!(
                published,
                "{}: no MQTT publish:\n{}",
                from.name,
                self.log(from)
            );
            for to in self
                .nodes
                .iter()
                .skip(i + 1)
                .chain(self.nodes.iter().take(i))
            {
                let seen = wait_until(Duration::from_secs(30), || {
                    mqtt_read_retained(to.mqtt_port, &topic).as_deref() == Some("up")
                });
                assert!(
                    seen,
                    "{} -> {}: no retained message:\n{}",
                    from.name,
                    to.name,
                    self.log(to)
                );
            }
            mqtt_publish_retained(from.mqtt_port, &topic, "");
        }
    }

    /// Every node's MQTT URL, starting at node `first` and going round: a client's list in its
    /// order of preference.
    pub fn urls_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|i| self.nodes[(first + i) % self.nodes.len()].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` at once (SIGKILL), as a power cut would.
    pub fn kill(&self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.lock().unwrap().take() {
            p.kill();
        }
    }

    /// The MQTT client ids connected to node `i` (empty if it does not answer), from its
    /// monitoring endpoint.
    pub fn clients(&self, i: usize) -> Vec<String> {
        let url = format!(
            "http://127.0.0.1:{}/connz?limit=100000",
            self.nodes[i].http_port
        );
        let Ok(mut r) = ureq::get(&url).call() else {
            return Vec::new();
        };
        let Ok(body) = r.body_mut().read_to_string() else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["mqtt_client"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn log(&self, n: &NatsNode) -> String {
        n.proc
            .lock()
            .unwrap()
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

/// Publishes a retained QoS 1 message with Mosquitto's client; true once acknowledged.
fn mqtt_publish_retained(port: u16, topic: &str, text: &str) -> bool {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r", "-t", topic];
    if text.is_empty() {
        args.push("-n");
    } else {
        args.extend(["-m", text]);
    }
    // A node still electing its JetStream leaders may hold the connection: bounded.
    let mut bounded = vec!["5", "mosquitto_pub"];
    bounded.extend(args);
    run(Path::new("timeout"), &bounded).status.success()
}

/// The retained message on `topic`, if one arrives within 2 s.
fn mqtt_read_retained(port: u16, topic: &str) -> Option<String> {
    let port = port.to_string();
    let out = run(
        Path::new("mosquitto_sub"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "2",
        ],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
