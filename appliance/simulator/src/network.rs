//! Network flows and DNS lookups of the long-running pods: pod to pod (same zone and cross
//! zone), to Service ClusterIPs, to cluster DNS, to the internet, to cloud APIs, to private-link
//! endpoints, databases and load balancers in the VPC, to the control plane and to the instance
//! metadata service.

use crate::SimConfig;
use crate::catalog::{
    self, Endpoint, EndpointKind, IMDS_IP, KUBE_DNS_IP, KUBERNETES_SERVICE_IP, SYSTEM_NAMESPACES,
    VPC_RESOLVER_IP,
};
use crate::rng::{Rng, hash2, unit};
use crate::topology::{MINUTE, Node, Pod, PodKind, Workload, WorkloadKind};

/// Flows are active or idle in buckets of this length.
pub(crate) const ACTIVITY_BUCKET: i64 = 5 * MINUTE;

/// Where a flow goes, as the network analysis should classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKind {
    /// Pod to pod in the same zone.
    SameZone,
    /// Pod to pod across zones.
    CrossZone,
    /// To a Service ClusterIP.
    Service,
    /// To cluster DNS (kube-dns).
    ClusterDns,
    /// To the internet (public addresses).
    Internet,
    /// To a cloud provider API over public addresses (S3, SQS, DynamoDB, STS).
    CloudApi,
    /// To a VPC interface endpoint (PrivateLink).
    PrivateLink,
    /// To a managed database or cache inside the VPC.
    Database,
    /// To an internal load balancer.
    LoadBalancer,
    /// To the Kubernetes API server.
    ControlPlane,
    /// To the instance metadata service, 169.254.169.254.
    Imds,
    /// CoreDNS to the VPC resolver.
    UpstreamDns,
}

#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub pod: u32,
    /// When the source pod started.
    pub start_ms: i64,
    pub workload: u32,
    pub node: u32,
    pub kind: FlowKind,
    pub dst_ip: String,
    pub dst_port: i64,
    pub protocol: &'static str,
    pub dst_domain: Option<String>,
    pub dst_node: Option<u32>,
    /// Bytes per second sent at load factor 1.
    pub tx_rate: f64,
    pub rx_ratio: f64,
    pub tx_packet: f64,
    pub rx_packet: f64,
    pub active_prob: f64,
    pub key: u64,
}

impl Flow {
    /// Whether the flow carries traffic at `t` (idle in some 5-minute buckets).
    #[inline]
    pub(crate) fn active_at(&self, t: i64) -> bool {
        unit(hash2(self.key, t.div_euclid(ACTIVITY_BUCKET) as u64)) < self.active_prob
    }
}

/// The DNS lookups behind a flow with a destination name: repeated every `period`.
#[derive(Debug, Clone)]
pub(crate) struct DnsSeries {
    pub flow: u32,
    pub name: String,
    /// The A answer, comma-separated, in each rotation (resolvers rotate the order).
    pub a: Vec<String>,
    /// The AAAA answer rotations; `Some(vec![""])` when asked but the name has no IPv6.
    pub aaaa: Option<Vec<String>>,
    pub cname: Option<&'static str>,
    pub ttl: i64,
    pub period: i64,
    pub phase: i64,
}

pub(crate) struct Network {
    pub flows: Vec<Flow>,
    pub dns: Vec<DnsSeries>,
}

fn rotations(addrs: &[&str]) -> Vec<String> {
    (0..addrs.len().max(1))
        .map(|r| {
            (0..addrs.len())
                .map(|i| addrs[(i + r) % addrs.len()])
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// `floor(p)` plus one more with probability `frac(p)`.
fn draw(rng: &mut Rng, p: f64) -> usize {
    let whole = p.floor();
    whole as usize + usize::from(rng.chance(p - whole))
}

struct Ctx<'a> {
    nodes: &'a [Node],
    workloads: &'a [Workload],
    pods: &'a [Pod],
    /// Serving workloads (with a Service) per namespace, and all of them.
    serving_by_ns: Vec<Vec<usize>>,
    serving: Vec<usize>,
    namespaces: &'a [String],
}

pub(crate) fn build(
    config: &SimConfig,
    namespaces: &[String],
    nodes: &[Node],
    workloads: &[Workload],
    pods: &[Pod],
    rng: &mut Rng,
) -> Network {
    let mut serving_by_ns = vec![Vec::new(); namespaces.len()];
    let mut serving = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        if w.service.is_some() {
            let ns = namespaces.iter().position(|n| *n == w.namespace).unwrap();
            serving_by_ns[ns].push(i);
            serving.push(i);
        }
    }
    let ctx = Ctx {
        nodes,
        workloads,
        pods,
        serving_by_ns,
        serving,
        namespaces,
    };
    let mut net = Network {
        flows: Vec::new(),
        dns: Vec::new(),
    };
    let scale = config.flows_per_pod.max(0.0) / 1.5;
    if scale == 0.0 {
        return net;
    }
    for (pi, pod) in pods.iter().enumerate() {
        if pod.kind != PodKind::Static {
            continue;
        }
        let w = &workloads[pod.workload];
        let system = SYSTEM_NAMESPACES.contains(&w.namespace.as_str());
        macro_rules! add {
            ($spec:expr $(,)?) => {{
                let spec = $spec;
                ctx.add(&mut net, rng, pi, spec);
            }};
        }
        if w.kind == WorkloadKind::DaemonSet {
            let target = match w.name.as_str() {
                "fluent-bit" => ctx.find("logging", "loki"),
                "tally-netmon" => ctx.find("tally", "tally-appliance"),
                "aws-node" => {
                    if rng.chance(scale) {
                        add!(FlowSpec::imds(rng));
                    }
                    None
                }
                _ => None,
            };
            if let Some(t) = target
                && rng.chance(scale)
            {
                let spec = ctx.service_spec(rng, t);
                add!(spec);
            }
            continue;
        }
        if w.name == "coredns" {
            add!(FlowSpec {
                kind: FlowKind::UpstreamDns,
                dst_ip: VPC_RESOLVER_IP.to_string(),
                dst_port: 53,
                protocol: "UDP",
                dst_domain: None,
                dst_node: None,
                tx_rate: rng.log_range(300.0, 5_000.0),
                rx_ratio: rng.range(2.0, 3.5),
                tx_packet: 80.0,
                rx_packet: 200.0,
                active_prob: 1.0,
                dns: None,
            },);
            continue;
        }
        if system && rng.chance(0.8 * scale.min(1.0)) {
            add!(FlowSpec {
                kind: FlowKind::ControlPlane,
                dst_ip: KUBERNETES_SERVICE_IP.to_string(),
                dst_port: 443,
                protocol: "TCP",
                dst_domain: Some("kubernetes.default.svc.cluster.local".to_string()),
                dst_node: None,
                tx_rate: rng.log_range(200.0, 20_000.0),
                rx_ratio: rng.range(3.0, 10.0),
                tx_packet: 500.0,
                rx_packet: 1_200.0,
                active_prob: 1.0,
                dns: Some(DnsSpec::cluster(KUBERNETES_SERVICE_IP)),
            },);
        }
        // Calls to other services through their ClusterIP.
        for _ in 0..draw(rng, 0.675 * scale) {
            if let Some(t) = ctx.pick_target(rng, pod.workload) {
                let spec = ctx.service_spec(rng, t);
                add!(spec);
            }
        }
        // Direct pod-to-pod traffic (headless services, client-side load balancing).
        for _ in 0..draw(rng, 0.25 * scale) {
            if let Some(t) = ctx.pick_target(rng, pod.workload)
                && let Some(spec) = ctx.pod_spec(rng, pod, t)
            {
                add!(spec);
            }
        }
        // External endpoints this team uses.
        for _ in 0..draw(rng, 0.3 * scale) {
            let domains = catalog::team_endpoints(&w.namespace);
            let e = catalog::endpoint(rng.pick::<&str>(domains));
            add!(FlowSpec::endpoint(rng, e));
            if e.kind == EndpointKind::CloudApi && rng.chance(0.6) {
                add!(FlowSpec::imds(rng));
            }
        }
        // Cluster DNS itself.
        for _ in 0..draw(rng, 0.15 * scale) {
            add!(FlowSpec {
                kind: FlowKind::ClusterDns,
                dst_ip: KUBE_DNS_IP.to_string(),
                dst_port: 53,
                protocol: "UDP",
                dst_domain: None,
                dst_node: None,
                tx_rate: rng.log_range(30.0, 1_000.0),
                rx_ratio: rng.range(2.0, 3.0),
                tx_packet: 75.0,
                rx_packet: 180.0,
                active_prob: rng.range(0.9, 1.0),
                dns: None,
            },);
        }
    }
    net
}

struct DnsSpec {
    a: Vec<String>,
    aaaa: Option<Vec<String>>,
    cname: Option<&'static str>,
    ttl: i64,
}

impl DnsSpec {
    /// A cluster-local name: one A record, CoreDNS's default TTL of 5 s, no AAAA (IPv4 cluster).
    fn cluster(ip: &str) -> DnsSpec {
        DnsSpec {
            a: vec![ip.to_string()],
            aaaa: None,
            cname: None,
            ttl: 5,
        }
    }
}

struct FlowSpec {
    kind: FlowKind,
    dst_ip: String,
    dst_port: i64,
    protocol: &'static str,
    dst_domain: Option<String>,
    dst_node: Option<u32>,
    tx_rate: f64,
    rx_ratio: f64,
    tx_packet: f64,
    rx_packet: f64,
    active_prob: f64,
    dns: Option<DnsSpec>,
}

impl FlowSpec {
    fn imds(rng: &mut Rng) -> FlowSpec {
        FlowSpec {
            kind: FlowKind::Imds,
            dst_ip: IMDS_IP.to_string(),
            dst_port: 80,
            protocol: "TCP",
            dst_domain: None,
            dst_node: None,
            tx_rate: rng.log_range(10.0, 200.0),
            rx_ratio: rng.range(1.5, 4.0),
            tx_packet: 300.0,
            rx_packet: 600.0,
            active_prob: rng.range(0.3, 0.8),
            dns: None,
        }
    }

    fn endpoint(rng: &mut Rng, e: &'static Endpoint) -> FlowSpec {
        let kind = match e.kind {
            EndpointKind::Internet => FlowKind::Internet,
            EndpointKind::CloudApi => FlowKind::CloudApi,
            EndpointKind::PrivateLink => FlowKind::PrivateLink,
            EndpointKind::ControlPlane => FlowKind::ControlPlane,
            EndpointKind::LoadBalancer => FlowKind::LoadBalancer,
            EndpointKind::Database => FlowKind::Database,
        };
        let aaaa = rotations(e.aaaa);
        FlowSpec {
            kind,
            dst_ip: rng.pick(e.a).to_string(),
            dst_port: e.port,
            protocol: "TCP",
            dst_domain: Some(e.domain.to_string()),
            dst_node: None,
            tx_rate: rng.log_range(200.0, 60_000.0),
            rx_ratio: e.rx_ratio * rng.range(0.7, 1.4),
            tx_packet: rng.range(400.0, 1_200.0),
            rx_packet: e.packet_bytes,
            active_prob: rng.range(0.4, 1.0),
            dns: Some(DnsSpec {
                a: rotations(e.a),
                aaaa: if e.kind == EndpointKind::Internet || !e.aaaa.is_empty() {
                    Some(aaaa)
                } else {
                    None
                },
                cname: e.cname,
                ttl: e.ttl,
            }),
        }
    }
}

impl Ctx<'_> {
    fn find(&self, namespace: &str, name: &str) -> Option<usize> {
        self.workloads
            .iter()
            .position(|w| w.namespace == namespace && w.name == name)
    }

    /// Another serving workload, usually in the same namespace.
    fn pick_target(&self, rng: &mut Rng, from: usize) -> Option<usize> {
        let ns = self
            .namespaces
            .iter()
            .position(|n| *n == self.workloads[from].namespace)?;
        let local = &self.serving_by_ns[ns];
        let list = if local.len() > 1 && rng.chance(0.6) {
            local
        } else {
            &self.serving
        };
        if list.is_empty() {
            return None;
        }
        let t = *rng.pick(list);
        (t != from).then_some(t)
    }

    fn service_spec(&self, rng: &mut Rng, target: usize) -> FlowSpec {
        let t = &self.workloads[target];
        let (ip, port) = t.service.clone().expect("serving workloads have a Service");
        FlowSpec {
            kind: FlowKind::Service,
            dst_ip: ip.clone(),
            dst_port: port,
            protocol: "TCP",
            dst_domain: Some(t.service_domain()),
            dst_node: None,
            tx_rate: rng.log_range(300.0, 300_000.0),
            rx_ratio: rng.range(0.5, 5.0),
            tx_packet: rng.range(300.0, 1_200.0),
            rx_packet: rng.range(600.0, 1_400.0),
            active_prob: rng.range(0.85, 1.0),
            dns: Some(DnsSpec::cluster(&ip)),
        }
    }

    fn pod_spec(&self, rng: &mut Rng, from: &Pod, target: usize) -> Option<FlowSpec> {
        let t = &self.workloads[target];
        let statics: Vec<usize> = t
            .pod_slots()
            .filter(|&p| self.pods[p].kind == PodKind::Static)
            .collect();
        if statics.is_empty() {
            return None;
        }
        let dst = &self.pods[*rng.pick(&statics)];
        let same_zone = self.nodes[dst.node].zone_index == self.nodes[from.node].zone_index;
        let (_, port) = t.service.clone()?;
        let domain = (t.kind == WorkloadKind::StatefulSet)
            .then(|| format!("{}.{}", dst.name, t.service_domain()));
        let dns = domain.as_ref().map(|_| DnsSpec::cluster(&dst.ip));
        Some(FlowSpec {
            kind: if same_zone {
                FlowKind::SameZone
            } else {
                FlowKind::CrossZone
            },
            dst_ip: dst.ip.clone(),
            dst_port: port,
            protocol: "TCP",
            dst_domain: domain,
            dst_node: Some(dst.node as u32),
            tx_rate: rng.log_range(1_000.0, 2_000_000.0),
            rx_ratio: rng.range(0.3, 3.0),
            tx_packet: rng.range(500.0, 1_400.0),
            rx_packet: rng.range(500.0, 1_400.0),
            active_prob: rng.range(0.85, 1.0),
            dns,
        })
    }

    fn add(&self, net: &mut Network, rng: &mut Rng, pod: usize, spec: FlowSpec) {
        let p = &self.pods[pod];
        let flow = net.flows.len() as u32;
        net.flows.push(Flow {
            pod: pod as u32,
            start_ms: p.start_ms,
            workload: p.workload as u32,
            node: p.node as u32,
            kind: spec.kind,
            dst_ip: spec.dst_ip,
            dst_port: spec.dst_port,
            protocol: spec.protocol,
            dst_domain: spec.dst_domain.clone(),
            dst_node: spec.dst_node,
            tx_rate: spec.tx_rate,
            rx_ratio: spec.rx_ratio,
            tx_packet: spec.tx_packet,
            rx_packet: spec.rx_packet,
            active_prob: spec.active_prob,
            key: hash2(p.key, 0xf10 + u64::from(flow)),
        });
        if let (Some(name), Some(dns)) = (spec.dst_domain, spec.dns) {
            // Clients with connection pools resolve less often than the TTL asks.
            let period = (dns.ttl * 1000).max(60_000) * rng.int(2, 10);
            net.dns.push(DnsSeries {
                flow,
                name,
                a: dns.a,
                aaaa: dns.aaaa,
                cname: dns.cname,
                ttl: dns.ttl,
                period,
                phase: rng.int(0, period - 1),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_cycle_the_answers() {
        assert_eq!(rotations(&["a", "b", "c"]), vec!["a,b,c", "b,c,a", "c,a,b"]);
        assert_eq!(rotations(&[]), vec![""]);
    }
}
