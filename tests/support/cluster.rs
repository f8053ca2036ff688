//! The real Kubernetes cluster the end-to-end tests talk to.
//!
//! [`cluster()`] finds it: the cluster `tests/cluster/up.sh` started on this machine (its
//! env file, `$TALLY_CLUSTER_DIR/env`, default `/tmp/tally-cluster/env`), or the user's own
//! cluster when `TALLY_KUBECONFIG` names a kubeconfig (then `kubectl` comes from
//! `TALLY_KUBECTL` or the PATH). When neither is up the test fails and says how to start
//! one: tests never skip. Each test works in its own namespace ([`TestNamespace`]), deleted
//! when the test ends, together with the cluster-scoped objects it registered.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The admin kubeconfig (full rights: the tests create namespaces and RBAC objects).
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// The API server URL as seen from this machine.
    pub api_server: String,
    /// The API server's CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// Names of nodes that run a kubelet (empty for a user's cluster: ask the API).
    pub real_nodes: Vec<String>,
    /// Names of the kubelet-less nodes of the test cluster (empty for a user's cluster).
    pub fake_nodes: Vec<String>,
    /// The busybox image the test cluster has (pulled with `imagePullPolicy: Never`).
    pub busybox_image: String,
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The running cluster; panics with instructions when there is none.
pub fn cluster() -> Cluster {
    let cluster = if let Ok(kubeconfig) = std::env::var("TALLY_KUBECONFIG") {
        let kubectl = std::env::var("TALLY_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut c = Cluster {
            kubeconfig: PathBuf::from(kubeconfig),
            kubectl: PathBuf::from(kubectl),
            api_server: String::new(),
            ca_pem: Vec::new(),
            real_nodes: Vec::new(),
            fake_nodes: Vec::new(),
            busybox_image: std::env::var("TALLY_IMAGE_BUSYBOX")
                .unwrap_or_else(|_| "tally.local/busybox:1.35".into()),
        };
        c.api_server = c
            .kubectl(&[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ])
            .expect("the API server of TALLY_KUBECONFIG");
        let ca = c
            .kubectl(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.certificate-authority-data}",
            ])
            .expect("the CA of TALLY_KUBECONFIG");
        c.ca_pem = decode_base64(&ca);
        c
    } else {
        let dir =
            std::env::var("TALLY_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/tally-cluster".into());
        let env_file = Path::new(&dir).join("env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
            panic!(
                "no Kubernetes test cluster is up ({}: {e}). Start it with `bash tests/cluster/up.sh` \
                 (tests/run.sh does), or set TALLY_KUBECONFIG to your own cluster's kubeconfig",
                env_file.display()
            )
        });
        let env = parse_env_file(&text);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{} lacks {k}", env_file.display()))
        };
        let ca_path = get("TALLY_CA_CERT");
        Cluster {
            kubeconfig: PathBuf::from(get("TALLY_ADMIN_KUBECONFIG")),
            kubectl: PathBuf::from(get("TALLY_KUBECTL")),
            api_server: get("TALLY_API_SERVER"),
            ca_pem: std::fs::read(&ca_path)
                .unwrap_or_else(|e| panic!("cannot read {ca_path}: {e}")),
            real_nodes: get("TALLY_NODES")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            fake_nodes: get("TALLY_FAKE_NODES")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            busybox_image: get("TALLY_IMAGE_BUSYBOX"),
        }
    };
    if let Err(e) = cluster.kubectl(&["get", "--raw", "/readyz"]) {
        panic!(
            "the Kubernetes API server at {} does not answer ({e}). Start the test cluster with \
             `bash tests/cluster/up.sh` (tests/run.sh does)",
            cluster.api_server
        );
    }
    cluster
}

/// Decodes standard base64 (what kubeconfigs and Secrets hold).
pub fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= d << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

impl Cluster {
    /// Runs kubectl as the admin and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.kubectl.display()))?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `kubectl apply -f -` of a YAML document.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"));
    }

    /// Waits until `check` returns `Some`, polling every 500 ms, or panics after `timeout`
    /// with `what` and the last error.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(value) => return value,
                Err(e) if Instant::now() > deadline => {
                    panic!("timed out after {timeout:?} waiting for {what}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// A ServiceAccount's token: a token Secret is created for it (works on 1.20 and on
    /// clusters that no longer create them automatically) and read once the token
    /// controller filled it.
    /// The appliance's CA certificate (PEM) as it publishes it for agents: the ConfigMap
    /// `tally-ca` of `namespace`.
    pub fn published_ca(&self, namespace: &str) -> String {
        self.kubectl(&[
            "-n",
            namespace,
            "get",
            "configmap",
            "tally-ca",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .expect("the published CA")
    }

    pub fn service_account_token(&self, namespace: &str, account: &str) -> String {
        let secret = format!("{account}-token-e2e");
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\n  namespace: {namespace}\n  \
             annotations:\n    kubernetes.io/service-account.name: {account}\ntype: kubernetes.io/service-account-token\n"
        ));
        let encoded = self.wait(
            &format!("the token of {namespace}/{account}"),
            Duration::from_secs(30),
            || {
                let token = self.kubectl(&[
                    "-n",
                    namespace,
                    "get",
                    "secret",
                    &secret,
                    "-o",
                    "jsonpath={.data.token}",
                ])?;
                if token.is_empty() {
                    Err("not filled yet".into())
                } else {
                    Ok(token)
                }
            },
        );
        String::from_utf8(decode_base64(&encoded)).expect("token is text")
    }

    /// A kubeconfig file (in `dir`) that authenticates with `token`.
    pub fn kubeconfig_for_token(&self, dir: &Path, name: &str, token: &str) -> PathBuf {
        let ca = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&ca, &self.ca_pem).expect("write CA");
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
                 certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n\
                 - name: c\n  context:\n    cluster: c\n    user: {name}\ncurrent-context: c\n",
                server = self.api_server,
                ca = ca.display()
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

/// A namespace of one test, deleted (with the cluster-scoped objects registered by
/// [`TestNamespace::owns_cluster_object`]) when dropped.
pub struct TestNamespace {
    pub cluster: Cluster,
    pub name: String,
    cluster_objects: Vec<(String, String)>,
}

impl TestNamespace {
    /// Creates `tally-e2e-<prefix>-<random>`.
    pub fn create(cluster: &Cluster, prefix: &str) -> TestNamespace {
        let suffix = (rand_suffix() ^ (u64::from(std::process::id()) << 20)) & 0xff_ffff;
        let name = format!("tally-e2e-{prefix}-{suffix:06x}");
        cluster
            .kubectl(&["create", "namespace", &name])
            .unwrap_or_else(|e| panic!("{e}"));
        TestNamespace {
            cluster: cluster.clone(),
            name,
            cluster_objects: Vec::new(),
        }
    }

    /// Deletes `kind/name` (cluster-scoped) with the namespace.
    pub fn owns_cluster_object(&mut self, kind: &str, name: &str) {
        self.cluster_objects
            .push((kind.to_string(), name.to_string()));
    }

    /// Creates these ServiceAccounts in the namespace.
    pub fn service_accounts(&self, names: &[&str]) {
        let yaml: Vec<String> = names
            .iter()
            .map(|account| {
                format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {}}}\n",
                    self.name
                )
            })
            .collect();
        self.cluster.apply(&yaml.join("---\n"));
    }

    /// Binds the ServiceAccount `account` of this namespace to the ClusterRole `role`, under
    /// the binding `<namespace>-<account>` (deleted with the namespace).
    pub fn bind_cluster_role(&mut self, account: &str, role: &str) {
        let binding = format!("{}-{account}", self.name);
        self.owns_cluster_object("clusterrolebinding", &binding);
        self.cluster.apply(&format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {binding}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]
"#,
            ns = self.name
        ));
    }

    /// An agent's ClusterRole exactly as the repository keeps it (`rbac_yaml`, whose role is
    /// named `repository_name`), renamed for this test and bound to a new ServiceAccount
    /// `account`: the agent runs with exactly those rights. Answers the role's name.
    pub fn agent_account(
        &mut self,
        rbac_yaml: &str,
        repository_name: &str,
        account: &str,
    ) -> String {
        let role = format!("{}-{account}", self.name);
        let rbac = rbac_yaml.replace(
            &format!("name: {repository_name}"),
            &format!("name: {role}"),
        );
        assert!(
            rbac.contains(&role),
            "the RBAC file names its ClusterRole {repository_name}"
        );
        self.owns_cluster_object("clusterrole", &role);
        self.cluster.apply(&rbac);
        self.service_accounts(&[account]);
        self.bind_cluster_role(account, &role);
        role
    }

    /// The appliance's ServiceAccount `appliance`: it may review tokens
    /// (system:auth-delegator), as the certificate bootstrap does, and keep its CA in a Secret
    /// and a ConfigMap of this namespace.
    pub fn appliance_account(&mut self) {
        self.service_accounts(&["appliance"]);
        self.bind_cluster_role("appliance", "system:auth-delegator");
        self.cluster.apply(&format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: appliance-ca, namespace: {ns}}}
rules:
- {{apiGroups: [""], resources: [secrets, configmaps], verbs: [get, create, update]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: appliance-ca, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: appliance-ca}}
subjects: [{{kind: ServiceAccount, name: appliance, namespace: {ns}}}]
"#,
            ns = self.name
        ));
    }

    /// Writes the token of the ServiceAccount `account` to `<dir>/<account>.token`.
    pub fn token_file(&self, dir: &Path, account: &str) -> PathBuf {
        let path = dir.join(format!("{account}.token"));
        std::fs::write(
            &path,
            self.cluster.service_account_token(&self.name, account),
        )
        .expect("write the token file");
        path
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        for (kind, name) in &self.cluster_objects {
            let _ =
                self.cluster
                    .kubectl(&["delete", kind, name, "--ignore-not-found", "--wait=false"]);
        }
        let _ = self.cluster.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// The `tally-agent` binary under test: `$TALLY_AGENT_BIN`, or the debug build in the cargo
/// target directory (the test command builds it first).
pub fn tally_agent_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TALLY_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/tally-agent");
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build --bin tally-agent` (the test command does) or set TALLY_AGENT_BIN",
        bin.display()
    );
    bin
}

/// A `tally-agent collector` process, killed when dropped.
pub struct Collector {
    pub child: std::process::Child,
    /// `http://ADDR` of its /healthz, /readyz and /metrics.
    pub health_url: String,
    pub stderr_log: PathBuf,
}

impl Collector {
    /// Starts `tally-agent collector` with `args` (its health listener on a free loopback
    /// port) and waits until it prints its address.
    pub fn start(stderr_log: &Path, args: &[&str], env: &[(&str, &str)]) -> Collector {
        use std::io::BufRead;
        let log = std::fs::File::create(stderr_log).expect("collector log");
        let mut child = Command::new(tally_agent_bin())
            .arg("collector")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tally_agent_bin().display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let health_url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening ") {
                        break format!("http://{addr}");
                    }
                }
                _ => {
                    let status = child.wait();
                    panic!(
                        "tally-agent collector exited ({status:?}) before it was ready:\n{}",
                        std::fs::read_to_string(stderr_log).unwrap_or_default()
                    );
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Collector {
            child,
            health_url,
            stderr_log: stderr_log.to_path_buf(),
        }
    }

    /// The collector's Prometheus metrics as `name{labels}` → value.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        crate::prometheus_metrics(&self.health_url).await
    }

    /// SIGTERM, and wait (up to 30 s) for it to deliver what it buffered and exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tally serve` on fixed loopback ports (so it can be restarted where agents expect
/// it) and waits until it prints its addresses.
pub fn start_tally_at(
    data_dir: &Path,
    flight: &str,
    http: &str,
    args: &[&str],
) -> Result<crate::Server, String> {
    use std::io::BufRead;
    let stderr_log = data_dir.with_extension("stderr.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_log)
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(crate::tally_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--flight-listen", flight, "--http-listen", http])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", crate::tally_bin().display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (mut flight_url, mut http_url) = (None, None);
    while flight_url.is_none() || http_url.is_none() {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("flight ") {
                    flight_url = Some(url.to_string());
                } else if let Some(url) = line.strip_prefix("http ") {
                    http_url = Some(url.to_string());
                }
            }
            _ => {
                let status = child.wait().map_err(|e| e.to_string())?;
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                return Err(format!(
                    "tally serve exited ({status}) before it was ready:\n{log}"
                ));
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(crate::Server {
        child,
        flight_url: flight_url.expect("flight"),
        http_url: http_url.expect("http"),
        stderr_log,
    })
}

/// A free loopback address (`127.0.0.1:PORT`) to give a server that must keep its port.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}
