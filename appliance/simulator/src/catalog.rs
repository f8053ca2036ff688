//! The fixed vocabulary of the simulated cluster: instance types, namespaces, application
//! names, sidecars and the external endpoints workloads talk to.
//!
//! Every IP address here is from a private, link-local or documentation range (RFC 1918,
//! RFC 3927, RFC 5737, RFC 3849): this is simulated data and nothing is ever sent anywhere.

/// An EC2 instance type as a Kubernetes node sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpu: u32,
    pub memory_gib: u32,
    /// The EKS VPC-CNI pod limit (`(ENIs × (IPs per ENI − 1)) + 2`, capped at 250 in prefix mode).
    pub max_pods: u32,
}

const fn it(name: &'static str, vcpu: u32, memory_gib: u32, max_pods: u32) -> InstanceType {
    InstanceType {
        name,
        vcpu,
        memory_gib,
        max_pods,
    }
}

/// A node group: its name, the instance types it mixes (with weights) and its spot share.
pub(crate) struct NodeGroupDef {
    pub name: &'static str,
    pub types: &'static [(InstanceType, f64)],
    pub spot_share: f64,
    /// Share of the cluster's nodes in this group.
    pub share: f64,
}

pub(crate) const NODE_GROUPS: &[NodeGroupDef] = &[
    NodeGroupDef {
        name: "general",
        types: &[
            (it("m5.xlarge", 4, 16, 58), 0.3),
            (it("m5.2xlarge", 8, 32, 58), 1.0),
            (it("m5.4xlarge", 16, 64, 234), 2.0),
            (it("m6i.2xlarge", 8, 32, 58), 1.0),
            (it("m6i.4xlarge", 16, 64, 234), 2.0),
            (it("m6i.8xlarge", 32, 128, 234), 0.7),
            (it("m5a.2xlarge", 8, 32, 58), 0.3),
        ],
        spot_share: 0.2,
        share: 0.6,
    },
    NodeGroupDef {
        name: "compute",
        types: &[
            (it("c5.xlarge", 4, 8, 58), 0.3),
            (it("c5.2xlarge", 8, 16, 58), 1.0),
            (it("c5.4xlarge", 16, 32, 234), 2.0),
            (it("c6i.4xlarge", 16, 32, 234), 1.5),
            (it("c6i.8xlarge", 32, 64, 234), 0.5),
        ],
        spot_share: 0.55,
        share: 0.24,
    },
    NodeGroupDef {
        name: "memory",
        types: &[
            (it("r5.xlarge", 4, 32, 58), 0.3),
            (it("r5.2xlarge", 8, 64, 58), 1.5),
            (it("r6i.2xlarge", 8, 64, 58), 1.5),
            (it("r5.4xlarge", 16, 128, 234), 1.5),
            (it("r6i.4xlarge", 16, 128, 234), 0.5),
        ],
        spot_share: 0.1,
        share: 0.16,
    },
];

/// Every instance type the simulator uses.
pub fn instance_types() -> impl Iterator<Item = &'static InstanceType> {
    NODE_GROUPS
        .iter()
        .flat_map(|g| g.types.iter().map(|(t, _)| t))
}

/// Allocatable CPU as the EKS bootstrap computes it: 6 % of the first core, 1 % of the second,
/// 0.5 % of the next two and 0.25 % of the rest are reserved for the kubelet and the OS.
pub(crate) fn allocatable_cpu(vcpu: u32) -> f64 {
    let mut reserved_m = 0.0;
    for core in 1..=vcpu {
        reserved_m += match core {
            1 => 60.0,
            2 => 10.0,
            3 | 4 => 5.0,
            _ => 2.5,
        };
    }
    (f64::from(vcpu) * 1000.0 - reserved_m).round() / 1000.0
}

/// Allocatable memory as the EKS bootstrap computes it: `255Mi + 11Mi × max_pods` of
/// kube-reserved plus a `100Mi` hard eviction threshold.
pub(crate) fn allocatable_memory(memory_gib: u32, max_pods: u32) -> i64 {
    let reserved_mi = 255 + 11 * i64::from(max_pods) + 100;
    i64::from(memory_gib) * GIB - reserved_mi * MIB
}

pub(crate) const MIB: i64 = 1 << 20;
pub(crate) const GIB: i64 = 1 << 30;

/// Namespaces of the platform itself, always present.
pub(crate) const SYSTEM_NAMESPACES: &[&str] = &[
    "kube-system",
    "monitoring",
    "logging",
    "ingress-nginx",
    "cert-manager",
    "tally",
];

/// Team namespaces with the nouns their services are named after.
pub(crate) const TEAMS: &[(&str, &str, &[&str])] = &[
    (
        "payments",
        "payments",
        &[
            "payments",
            "ledger",
            "fraud",
            "payouts",
            "refunds",
            "billing",
            "invoices",
            "settlement",
            "wallet",
            "tax",
        ],
    ),
    (
        "checkout",
        "checkout",
        &[
            "checkout",
            "cart",
            "orders",
            "promotions",
            "pricing",
            "quotes",
            "giftcards",
        ],
    ),
    (
        "search",
        "search",
        &[
            "search",
            "indexer",
            "ranker",
            "query",
            "autocomplete",
            "spellcheck",
            "crawler",
            "synonyms",
        ],
    ),
    (
        "catalog",
        "catalog",
        &[
            "catalog",
            "products",
            "media",
            "reviews",
            "taxonomy",
            "availability",
        ],
    ),
    (
        "recommendations",
        "recs",
        &[
            "recs",
            "similar-items",
            "trending",
            "personalize",
            "feature-store",
            "embeddings",
        ],
    ),
    (
        "ml-training",
        "ml",
        &[
            "trainer", "features", "datasets", "eval", "hyperopt", "labels",
        ],
    ),
    (
        "ml-serving",
        "ml",
        &[
            "model-server",
            "inference",
            "reranker",
            "embedder",
            "triton",
            "feature-cache",
        ],
    ),
    (
        "data-pipeline",
        "data",
        &[
            "ingest",
            "etl",
            "kafka-connect",
            "spark-driver",
            "airflow",
            "dbt",
            "cdc",
        ],
    ),
    (
        "analytics",
        "data",
        &[
            "events",
            "metrics",
            "clickstream",
            "dashboards",
            "reports",
            "attribution",
        ],
    ),
    (
        "auth",
        "identity",
        &[
            "auth",
            "sessions",
            "oauth",
            "users",
            "permissions",
            "tokens",
            "sso",
        ],
    ),
    (
        "notifications",
        "growth",
        &[
            "notifications",
            "email",
            "sms",
            "push",
            "webhooks",
            "templates",
        ],
    ),
    (
        "frontend",
        "web",
        &["web", "storefront", "bff", "assets", "ssr", "admin-ui"],
    ),
    (
        "inventory",
        "supply",
        &[
            "inventory",
            "warehouse",
            "stock",
            "reservations",
            "suppliers",
        ],
    ),
    (
        "shipping",
        "supply",
        &[
            "shipping", "rates", "labels", "tracking", "carriers", "returns",
        ],
    ),
];

pub(crate) const SERVICE_ROLES: &[&str] = &[
    "api",
    "worker",
    "consumer",
    "grpc",
    "web",
    "cache",
    "sync",
    "scheduler",
    "gateway",
    "processor",
    "exporter",
    "router",
];

pub(crate) const STATEFUL_ROLES: &[(&str, &str)] = &[
    ("db", "postgres"),
    ("redis", "redis"),
    ("kafka", "kafka"),
    ("es", "elasticsearch"),
    ("zookeeper", "zookeeper"),
    ("mongo", "mongod"),
];

pub(crate) const CRON_ROLES: &[&str] =
    &["cleanup", "report", "sync", "backup", "reindex", "export"];
pub(crate) const JOB_ROLES: &[&str] = &["migrate", "backfill", "train", "rebuild"];

pub(crate) const MAIN_CONTAINER_NAMES: &[&str] = &["app", "server", "main"];

/// Sidecars: name, typical CPU request, memory request.
pub(crate) const SIDECARS: &[(&str, f64, i64)] = &[
    ("istio-proxy", 0.1, 128 * MIB),
    ("envoy", 0.1, 128 * MIB),
    ("fluent-bit", 0.05, 64 * MIB),
    ("cloud-sql-proxy", 0.1, 128 * MIB),
    ("oauth2-proxy", 0.05, 64 * MIB),
    ("config-reloader", 0.01, 32 * MIB),
    ("statsd-exporter", 0.05, 64 * MIB),
    ("vault-agent", 0.05, 64 * MIB),
];

/// How an endpoint outside the cluster is classified by the network analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndpointKind {
    Internet,
    CloudApi,
    PrivateLink,
    ControlPlane,
    LoadBalancer,
    Database,
}

/// An endpoint outside the cluster: its DNS name, the addresses it answers with, its CNAME
/// chain, its TTL, its port and the traffic shape (rx/tx ratio, bytes per packet).
pub(crate) struct Endpoint {
    pub domain: &'static str,
    pub kind: EndpointKind,
    pub a: &'static [&'static str],
    pub aaaa: &'static [&'static str],
    pub cname: Option<&'static str>,
    pub ttl: i64,
    pub port: i64,
    pub rx_ratio: f64,
    pub packet_bytes: f64,
}

#[allow(clippy::too_many_arguments)]
const fn ep(
    domain: &'static str,
    kind: EndpointKind,
    a: &'static [&'static str],
    aaaa: &'static [&'static str],
    cname: Option<&'static str>,
    ttl: i64,
    port: i64,
    rx_ratio: f64,
) -> Endpoint {
    Endpoint {
        domain,
        kind,
        a,
        aaaa,
        cname,
        ttl,
        port,
        rx_ratio,
        packet_bytes: 1100.0,
    }
}

use EndpointKind::*;

/// External endpoints. Public ones answer with documentation addresses (192.0.2.0/24,
/// 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32); in-VPC ones with 10.0.192.0/18 addresses.
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    ep(
        "api.stripe.com",
        Internet,
        &["203.0.113.10", "203.0.113.11", "203.0.113.12"],
        &[],
        None,
        300,
        443,
        1.6,
    ),
    ep(
        "hooks.slack.com",
        Internet,
        &["203.0.113.40", "203.0.113.41"],
        &["2001:db8:40::1"],
        Some("hooks.slack.com.edge.example.net"),
        300,
        443,
        0.4,
    ),
    ep(
        "api.twilio.com",
        Internet,
        &["203.0.113.50", "203.0.113.51"],
        &[],
        Some("api.twilio.com.edgekey.example.net,e1234.a.akamaiedge.example.net"),
        60,
        443,
        0.8,
    ),
    ep(
        "api.sendgrid.com",
        Internet,
        &["203.0.113.60", "203.0.113.61"],
        &[],
        None,
        300,
        443,
        0.3,
    ),
    ep(
        "api.github.com",
        Internet,
        &["192.0.2.30"],
        &[],
        None,
        60,
        443,
        6.0,
    ),
    ep(
        "registry-1.docker.io",
        Internet,
        &["192.0.2.40", "192.0.2.41", "192.0.2.42"],
        &["2001:db8:42::10", "2001:db8:42::11"],
        None,
        60,
        443,
        40.0,
    ),
    ep(
        "pypi.org",
        Internet,
        &["192.0.2.50", "192.0.2.51"],
        &["2001:db8:50::223"],
        Some("dualstack.python.map.fastly.example.net"),
        300,
        443,
        30.0,
    ),
    ep(
        "huggingface.co",
        Internet,
        &["192.0.2.60", "192.0.2.61"],
        &[],
        Some("huggingface.co.cdn.example.net"),
        60,
        443,
        50.0,
    ),
    ep(
        "www.googleapis.com",
        Internet,
        &["192.0.2.70", "192.0.2.71", "192.0.2.72", "192.0.2.73"],
        &["2001:db8:70::a", "2001:db8:70::b"],
        None,
        300,
        443,
        3.0,
    ),
    ep(
        "api.datadoghq.com",
        Internet,
        &["192.0.2.80", "192.0.2.81"],
        &[],
        Some("alb-api-1234567890.us-east-1.elb.example.net"),
        60,
        443,
        0.1,
    ),
    ep(
        "o450123.ingest.sentry.io",
        Internet,
        &["192.0.2.90"],
        &[],
        None,
        60,
        443,
        0.2,
    ),
    ep(
        "s3.amazonaws.com",
        CloudApi,
        &[
            "198.51.100.10",
            "198.51.100.11",
            "198.51.100.12",
            "198.51.100.13",
        ],
        &[],
        Some("s3-1-w.amazonaws.com"),
        5,
        443,
        12.0,
    ),
    ep(
        "s3.us-east-1.amazonaws.com",
        CloudApi,
        &["198.51.100.20", "198.51.100.21", "198.51.100.22"],
        &["2001:db8:3::20", "2001:db8:3::21"],
        None,
        5,
        443,
        8.0,
    ),
    ep(
        "sqs.us-east-1.amazonaws.com",
        CloudApi,
        &["198.51.100.30", "198.51.100.31"],
        &[],
        None,
        60,
        443,
        1.5,
    ),
    ep(
        "dynamodb.us-east-1.amazonaws.com",
        CloudApi,
        &["198.51.100.40", "198.51.100.41"],
        &[],
        None,
        5,
        443,
        2.5,
    ),
    ep(
        "sts.us-east-1.amazonaws.com",
        CloudApi,
        &["198.51.100.50"],
        &[],
        None,
        60,
        443,
        2.0,
    ),
    ep(
        "vpce-0a1b2c3d4e5f60718-k2j3h4g5.execute-api.us-east-1.vpce.amazonaws.com",
        PrivateLink,
        &["10.0.200.11", "10.0.200.75", "10.0.200.139"],
        &[],
        None,
        60,
        443,
        1.2,
    ),
    ep(
        "vpce-07f6e5d4c3b2a1908-x9y8z7w6.partner-api.us-east-1.vpce.amazonaws.com",
        PrivateLink,
        &["10.0.201.20", "10.0.201.84"],
        &[],
        None,
        60,
        443,
        2.0,
    ),
    ep(
        "orders-db.cluster-cx7kq2example.us-east-1.rds.amazonaws.com",
        Database,
        &["10.0.210.15"],
        &[],
        Some("orders-db-instance-1.cx7kq2example.us-east-1.rds.amazonaws.com"),
        5,
        5432,
        3.0,
    ),
    ep(
        "sessions.abc123.ng.0001.use1.cache.amazonaws.com",
        Database,
        &["10.0.211.30"],
        &[],
        None,
        15,
        6379,
        1.3,
    ),
    ep(
        "internal-api-gw-1234567890.us-east-1.elb.amazonaws.com",
        LoadBalancer,
        &["10.0.220.10", "10.0.220.74"],
        &[],
        None,
        60,
        443,
        1.0,
    ),
    ep(
        "3f1c0a9e8d7b6a5c4e3f2a1b0c9d8e7f.gr7.us-east-1.eks.amazonaws.com",
        ControlPlane,
        &["10.0.250.10", "10.0.250.74"],
        &[],
        None,
        60,
        443,
        4.0,
    ),
];

/// Which endpoints a team namespace tends to use (indices into [`ENDPOINTS`] by domain).
pub(crate) fn team_endpoints(namespace: &str) -> &'static [&'static str] {
    let base = namespace.split('-').next().unwrap_or(namespace);
    match (namespace, base) {
        ("payments", _) | ("checkout", _) => &[
            "api.stripe.com",
            "orders-db.cluster-cx7kq2example.us-east-1.rds.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
            "vpce-07f6e5d4c3b2a1908-x9y8z7w6.partner-api.us-east-1.vpce.amazonaws.com",
        ],
        ("notifications", _) => &[
            "hooks.slack.com",
            "api.twilio.com",
            "api.sendgrid.com",
            "sqs.us-east-1.amazonaws.com",
        ],
        ("ml-training", _) => &[
            "s3.amazonaws.com",
            "huggingface.co",
            "pypi.org",
            "s3.us-east-1.amazonaws.com",
        ],
        ("ml-serving", _) | ("recommendations", _) => &[
            "s3.us-east-1.amazonaws.com",
            "dynamodb.us-east-1.amazonaws.com",
            "sessions.abc123.ng.0001.use1.cache.amazonaws.com",
        ],
        ("data-pipeline", _) | ("analytics", _) => &[
            "s3.amazonaws.com",
            "www.googleapis.com",
            "sqs.us-east-1.amazonaws.com",
            "dynamodb.us-east-1.amazonaws.com",
        ],
        ("auth", _) => &[
            "sessions.abc123.ng.0001.use1.cache.amazonaws.com",
            "sts.us-east-1.amazonaws.com",
            "vpce-0a1b2c3d4e5f60718-k2j3h4g5.execute-api.us-east-1.vpce.amazonaws.com",
        ],
        ("frontend", _) => &[
            "internal-api-gw-1234567890.us-east-1.elb.amazonaws.com",
            "o450123.ingest.sentry.io",
        ],
        ("kube-system", _) | ("cert-manager", _) | ("tally", _) => &[
            "3f1c0a9e8d7b6a5c4e3f2a1b0c9d8e7f.gr7.us-east-1.eks.amazonaws.com",
            "sts.us-east-1.amazonaws.com",
        ],
        ("monitoring", _) | ("logging", _) => &["api.datadoghq.com", "s3.us-east-1.amazonaws.com"],
        _ => &[
            "s3.us-east-1.amazonaws.com",
            "o450123.ingest.sentry.io",
            "api.github.com",
            "registry-1.docker.io",
            "dynamodb.us-east-1.amazonaws.com",
        ],
    }
}

pub(crate) fn endpoint(domain: &str) -> &'static Endpoint {
    ENDPOINTS
        .iter()
        .find(|e| e.domain == domain)
        .unwrap_or_else(|| panic!("endpoint {domain} is not in the catalog"))
}

/// The instance metadata service every AWS SDK talks to.
pub(crate) const IMDS_IP: &str = "169.254.169.254";
/// The VPC's DNS resolver (`AmazonProvidedDNS`, the VPC base address + 2) CoreDNS forwards to.
pub(crate) const VPC_RESOLVER_IP: &str = "10.0.0.2";
/// The `kubernetes.default` and `kube-dns` Service ClusterIPs.
pub(crate) const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub(crate) const KUBE_DNS_IP: &str = "10.96.0.10";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_follows_the_eks_formula() {
        assert_eq!(allocatable_cpu(4), 3.92);
        assert_eq!(allocatable_cpu(8), 7.91);
        assert_eq!(allocatable_cpu(16), 15.89);
        // m5.xlarge: 16 GiB − (255 + 11 × 58 + 100) MiB.
        assert_eq!(allocatable_memory(16, 58), 16 * GIB - 993 * MIB);
    }

    #[test]
    fn every_team_endpoint_is_in_the_catalog() {
        for ns in TEAMS
            .iter()
            .map(|t| t.0)
            .chain(SYSTEM_NAMESPACES.iter().copied())
        {
            for d in team_endpoints(ns) {
                let e = endpoint(d);
                assert!(!e.a.is_empty());
            }
        }
    }

    #[test]
    fn addresses_are_private_link_local_or_documentation() {
        for e in ENDPOINTS {
            for a in e.a {
                let ok = a.starts_with("10.")
                    || a.starts_with("192.0.2.")
                    || a.starts_with("198.51.100.")
                    || a.starts_with("203.0.113.");
                assert!(ok, "{} answers {a}", e.domain);
            }
            for a in e.aaaa {
                assert!(a.starts_with("2001:db8:"), "{} answers {a}", e.domain);
            }
        }
    }
}
