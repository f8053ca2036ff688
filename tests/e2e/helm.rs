//! The Helm chart (helm/tally) rendered and linted by real Helm 4 (`helm-python-sdk` embeds
//! it; helm/chart.py drives it), checked against values.schema.json, and applied to the real
//! test cluster's API server with server-side dry runs: every object of every variant must be
//! accepted as the API server would store it. Every agent's rendered ClusterRole must be
//! exactly the one its own tests run under (agents/<agent>/rbac.yaml).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tally_e2e::cluster::{TestNamespace, cluster, tally_agent_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python (tests/run.sh installs helm-python-sdk there), else python3 on the PATH.
fn python() -> PathBuf {
    let cache = std::env::var("TALLY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/tally")
        });
    let venv = cache.join("venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs helm/chart.py; Ok(stdout) on exit 0, else Err((exit code, stderr + stdout)).
fn chart_py(args: &[&str]) -> Result<String, (i32, String)> {
    let out = Command::new(python())
        .arg(repo().join("helm/chart.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)),
        ))
    }
}

/// A named set of `--set` expressions, and values as JSON (`--values-json`) for what
/// `--set` cannot say (it passes `0.15` as a string).
struct Variant {
    name: &'static str,
    sets: &'static [&'static str],
    json: Option<&'static str>,
}

const MIRROR: &str = "mirror.internal:5000/platform";

const VARIANTS: &[Variant] = &[
    Variant {
        name: "defaults",
        sets: &[],
        json: None,
    },
    Variant {
        name: "air-gapped",
        sets: &[
            "global.imageRegistry=mirror.internal:5000/platform",
            "global.imagePullSecrets={mirror-pull}",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
        json: None,
    },
    Variant {
        name: "netmon-off",
        sets: &["netmon.enabled=false"],
        json: None,
    },
    Variant {
        name: "operator-off",
        sets: &["operator.enabled=false"],
        json: None,
    },
    Variant {
        name: "ingress-on",
        sets: &[
            "ingress.enabled=true",
            "ingress.host=tally.corp.example",
            "ingress.tlsSecretName=tally-tls",
            "ingress.className=nginx",
        ],
        json: None,
    },
    Variant {
        name: "everything-else",
        sets: &[
            "netmon.mode=ebpf",
            "netmon.noDns=true",
            "operator.webhook.enabled=true",
            "appliance.retention.container_usage=30d",
            "appliance.retention.dns_lookups=2d",
            "networkPolicy.nodeCIDRs={10.213.0.0/24}",
            "auth.viewers.groups={finops}",
            "auth.admins.users={alice}",
            "collector.dcgmEndpoints={http://dcgm.gpu:9400/metrics}",
            "operator.namespaces={shop,search}",
        ],
        json: None,
    },
    Variant {
        name: "price-overrides",
        sets: &[],
        json: Some(PRICE_OVERRIDES),
    },
];

/// Two price overrides: a negotiated on-demand price and a spot GPU type (gpuCount given).
const PRICE_OVERRIDES: &str = r#"{"pricing": {"overrides": [
  {"provider": "aws", "region": "us-east-1", "instanceType": "m5.xlarge",
   "capacityType": "on_demand", "hourlyUsd": 0.15, "cpuCores": 4, "memoryGib": 16},
  {"provider": "gcp", "region": "europe-west1", "instanceType": "a2-highgpu-1g",
   "capacityType": "spot", "hourlyUsd": 1.1, "cpuCores": 12, "memoryGib": 85, "gpuCount": 1}
]}}"#;

fn set_args<'a>(variant: &'a Variant, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = extra.to_vec();
    for set in variant.sets {
        args.push("--set");
        args.push(set);
    }
    if let Some(json) = variant.json {
        args.push("--values-json");
        args.push(json);
    }
    args
}

/// Every object the chart renders for `variant` (in namespace `tally`).
fn objects(variant: &Variant) -> Vec<Value> {
    let out = chart_py(&set_args(variant, &["render", "--json"]))
        .unwrap_or_else(|(code, e)| panic!("render {} failed ({code}): {e}", variant.name));
    let doc: Value = serde_json::from_str(&out).expect("render --json prints JSON");
    doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["object"].clone())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(objects, kind, name).unwrap_or_else(|| {
        let have: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        panic!("no {kind}/{name} among {have:?}")
    })
}

/// The pod specs of every workload object.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter(|o| {
            ["StatefulSet", "Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap_or(""))
        })
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                &o["spec"]["template"]["spec"],
            )
        })
        .collect()
}

fn args_of(pod: &Value) -> Vec<String> {
    pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[test]
fn the_chart_lints_clean_with_real_helm_for_every_variant() {
    for variant in VARIANTS {
        let report =
            chart_py(&set_args(variant, &["lint", "--strict"])).unwrap_or_else(|(code, e)| {
                panic!(
                    "helm lint --strict of {} failed ({code}): {e}",
                    variant.name
                )
            });
        let report: Value = serde_json::from_str(&report).expect("lint report is JSON");
        assert_eq!(
            report["total_charts_linted"], 1,
            "{}: {report}",
            variant.name
        );
        assert_eq!(
            report["errors"],
            Value::Array(vec![]),
            "{}: {report}",
            variant.name
        );
        for message in report["messages"].as_array().expect("messages") {
            assert!(
                message["severity"].as_u64().unwrap_or(9) <= 1,
                "{}: lint warns: {message}",
                variant.name
            );
        }
    }
}

#[test]
fn every_variant_renders_what_its_values_say() {
    // Defaults: the four components, all from the one image, with the bootstrap wired up.
    let all = objects(&VARIANTS[0]);
    let appliance = get(&all, "StatefulSet", "tally-appliance");
    assert_eq!(appliance["spec"]["replicas"], 1);
    assert_eq!(
        appliance["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    let appliance_args = args_of(&appliance["spec"]["template"]["spec"]);
    for expected in [
        "serve",
        "--bootstrap-listen=0.0.0.0:8443",
        "--ca-secret=tally/tally-ca",
        "--bootstrap-allow=tally:tally-collector,tally:tally-operator,tally:tally-netmon",
    ] {
        assert!(
            appliance_args.iter().any(|a| a == expected),
            "{expected} missing: {appliance_args:?}"
        );
    }
    let names = appliance_args
        .iter()
        .find_map(|a| a.strip_prefix("--server-name="))
        .expect("--server-name");
    assert!(
        names.split(',').any(|n| n == "tally-appliance.tally.svc"),
        "{names}"
    );
    let collector = get(&all, "Deployment", "tally-collector");
    let collector_args = args_of(&collector["spec"]["template"]["spec"]);
    assert!(
        collector_args.contains(&"--appliance=https://tally-appliance.tally.svc:50051".to_string())
    );
    assert!(
        collector_args
            .contains(&"--bootstrap-url=https://tally-appliance.tally.svc:8443".to_string())
    );
    get(&all, "Deployment", "tally-operator");
    let netmon = get(&all, "DaemonSet", "tally-netmon");
    let netmon_pod = &netmon["spec"]["template"]["spec"];
    assert_eq!(netmon_pod["hostNetwork"], true);
    assert_eq!(
        netmon_pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "netmon tolerates every taint"
    );
    let netmon_container = &netmon_pod["containers"][0];
    assert_eq!(
        netmon_container["resources"]["requests"],
        serde_json::json!({"cpu": "50m", "memory": "64Mi"})
    );
    assert_eq!(
        netmon_container["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
    );
    // netmon gets its certificate like the collector: its ServiceAccount token at the
    // bootstrap, the CA from the appliance's ConfigMap; no certificate Secret to make by hand.
    let netmon_args = args_of(netmon_pod);
    for expected in [
        "--appliance=https://tally-appliance.tally.svc:50051",
        "--bootstrap-url=https://tally-appliance.tally.svc:8443",
        "--appliance-ca=/etc/tally/ca/ca.crt",
    ] {
        assert!(
            netmon_args.iter().any(|a| a == expected),
            "{expected} missing: {netmon_args:?}"
        );
    }
    assert!(
        !netmon_args.iter().any(|a| a.starts_with("--tls-")),
        "{netmon_args:?}"
    );
    assert_eq!(netmon_pod["automountServiceAccountToken"], true);
    assert_eq!(netmon_pod["serviceAccountName"], "tally-netmon");
    assert_eq!(
        netmon_pod["volumes"],
        serde_json::json!([{"name": "appliance-ca", "configMap": {"name": "tally-ca"}}]),
        "only the CA ConfigMap, no Secret"
    );
    let node_rule = get(&all, "NetworkPolicy", "tally-appliance")["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .find(|r| r["from"].is_null() && r["ports"].to_string().contains("flight"))
        .cloned()
        .expect("a rule for netmon on the host network");
    assert!(
        node_rule["ports"].to_string().contains("bootstrap"),
        "netmon reaches the bootstrap from the host network: {node_rule}"
    );
    assert!(
        find(&all, "Ingress", "tally-appliance").is_none(),
        "no Ingress by default"
    );
    get(&all, "NetworkPolicy", "tally-appliance");
    assert!(
        all.iter()
            .all(|o| o["kind"] != "MutatingWebhookConfiguration")
    );

    // NOTES.txt tells the user how to reach the UI and sign in.
    let rendered: Value =
        serde_json::from_str(&chart_py(&["render", "--json"]).expect("render")).expect("JSON");
    let notes = rendered["notes"].as_str().expect("NOTES.txt rendered");
    for needle in [
        "kubectl -n tally port-forward svc/tally-appliance 8080:8080",
        "Sign in with a Kubernetes token",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks `{needle}`:\n{notes}"
        );
    }

    // Security, every variant: read-only root, no escalation, seccomp, dropped capabilities,
    // non-root except netmon (capabilities need root in a container), limits on memory.
    for variant in VARIANTS {
        let objects = objects(variant);
        let pods = pod_specs(&objects);
        assert!(!pods.is_empty());
        for (name, pod) in pods {
            let pod_seccomp = &pod["securityContext"]["seccompProfile"]["type"];
            for c in pod["containers"].as_array().expect("containers") {
                let sc = &c["securityContext"];
                let what = format!("{}: {name}/{}", variant.name, c["name"]);
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{what}"
                );
                assert!(
                    sc["seccompProfile"]["type"] == "RuntimeDefault"
                        || *pod_seccomp == "RuntimeDefault",
                    "{what}: seccomp"
                );
                if !name.ends_with("netmon") {
                    assert_eq!(sc["runAsNonRoot"], true, "{what}");
                    assert!(sc["capabilities"]["add"].is_null(), "{what}");
                }
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{what}: memory limit"
                );
                assert!(
                    c["resources"]["requests"]["cpu"].is_string(),
                    "{what}: cpu request"
                );
            }
        }
        // Least RBAC: no wildcard anywhere; Secrets only in the appliance's namespaced Role,
        // and get only on its own CA.
        for o in objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        {
            let text = o["rules"].to_string();
            assert!(
                !text.contains('*'),
                "{}: wildcard in {}",
                variant.name,
                o["metadata"]["name"]
            );
            for rule in o["rules"].as_array().expect("rules") {
                let resources = rule["resources"].to_string();
                if resources.contains("\"secrets\"") {
                    assert_eq!(
                        o["kind"], "Role",
                        "{}: Secrets cluster-wide: {o}",
                        variant.name
                    );
                    let verbs = rule["verbs"].to_string();
                    assert!(
                        verbs == r#"["create"]"#
                            || (verbs == r#"["get"]"#
                                && rule["resourceNames"] == serde_json::json!(["tally-ca"])),
                        "{}: Secrets rule {rule}",
                        variant.name
                    );
                }
            }
        }
    }

    // Air-gapped: every image comes from the mirror, pinned, pulled with the mirror's Secret;
    // `chart.py images` lists exactly that one image to mirror.
    let air = objects(&VARIANTS[1]);
    let expected = format!(
        "{MIRROR}/tally-dev/tally@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    for (name, pod) in pod_specs(&air) {
        for c in pod["containers"].as_array().expect("containers") {
            assert_eq!(c["image"], expected.as_str(), "{name}");
        }
        assert_eq!(
            pod["imagePullSecrets"],
            serde_json::json!([{"name": "mirror-pull"}]),
            "{name}"
        );
    }
    let listed = chart_py(&set_args(&VARIANTS[1], &["images"])).expect("images");
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec![expected.as_str()]);
    let default_images = chart_py(&["images"]).expect("images");
    assert_eq!(
        default_images.lines().count(),
        1,
        "one image: {default_images}"
    );

    assert!(
        !notes.contains("netmon-tls"),
        "no certificate to make by hand:\n{notes}"
    );

    // netmon off: no DaemonSet, no netmon RBAC, no certificate for its account, and the
    // ingest port is no longer open to nodes.
    let no_netmon = objects(&VARIANTS[2]);
    assert!(no_netmon.iter().all(|o| {
        !o["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("netmon")
    }));
    let args =
        args_of(&get(&no_netmon, "StatefulSet", "tally-appliance")["spec"]["template"]["spec"]);
    assert!(
        args.contains(&"--bootstrap-allow=tally:tally-collector,tally:tally-operator".to_string()),
        "{args:?}"
    );
    let policy = get(&no_netmon, "NetworkPolicy", "tally-appliance");
    for rule in policy["spec"]["ingress"].as_array().expect("ingress") {
        if rule["ports"].to_string().contains("flight") {
            assert!(
                rule["from"].is_array(),
                "ingest open to all without netmon: {rule}"
            );
        }
    }

    // Operator off: no operator objects, and it may not obtain a certificate.
    let no_operator = objects(&VARIANTS[3]);
    assert!(no_operator.iter().all(|o| {
        !o["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("operator")
    }));
    let args =
        args_of(&get(&no_operator, "StatefulSet", "tally-appliance")["spec"]["template"]["spec"]);
    assert!(
        args.contains(&"--bootstrap-allow=tally:tally-collector,tally:tally-netmon".to_string()),
        "{args:?}"
    );

    // Ingress on: the UI port of the appliance's Service, with TLS.
    let ingress_on = objects(&VARIANTS[4]);
    let ingress = get(&ingress_on, "Ingress", "tally-appliance");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "tally.corp.example");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"],
        serde_json::json!({"name": "tally-appliance", "port": {"name": "http"}})
    );
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "tally-tls");

    // The rest: eBPF capabilities and cgroup mount, retention flags, webhook, bindings.
    let rest = objects(&VARIANTS[5]);
    let netmon_pod = &get(&rest, "DaemonSet", "tally-netmon")["spec"]["template"]["spec"];
    let netmon_args = args_of(netmon_pod);
    assert!(
        netmon_args.contains(&"--mode=ebpf".to_string())
            && netmon_args.contains(&"--no-dns".to_string())
    );
    assert_eq!(
        netmon_pod["containers"][0]["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE"])
    );
    let args = args_of(&get(&rest, "StatefulSet", "tally-appliance")["spec"]["template"]["spec"]);
    assert!(
        args.contains(&"--retention=container_usage=30d".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--retention=dns_lookups=2d".to_string()),
        "{args:?}"
    );
    let operator_args =
        args_of(&get(&rest, "Deployment", "tally-operator")["spec"]["template"]["spec"]);
    assert!(
        operator_args.contains(&"--namespace=shop,search".to_string()),
        "{operator_args:?}"
    );
    get(&rest, "MutatingWebhookConfiguration", "tally-operator");
    get(&rest, "Service", "tally-operator-webhook");
    assert_eq!(
        get(&rest, "ClusterRoleBinding", "tally-viewer")["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "finops"}])
    );
    get(&rest, "ClusterRoleBinding", "tally-admin");
    assert!(
        find(&rest, "ClusterRoleBinding", "tally-approver").is_none(),
        "nobody to bind"
    );
    let policy = get(&rest, "NetworkPolicy", "tally-appliance");
    assert!(
        policy["spec"]["ingress"]
            .to_string()
            .contains("10.213.0.0/24")
    );
}

#[test]
fn price_overrides_render_a_configmap_mounted_and_passed_with_prices() {
    let variant = VARIANTS
        .iter()
        .find(|v| v.name == "price-overrides")
        .expect("variant");
    let objects = objects(variant);
    let config_map = get(&objects, "ConfigMap", "tally-appliance-prices");
    let csv = config_map["data"]["prices.csv"]
        .as_str()
        .expect("prices.csv");
    let rows: Vec<&str> = csv.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        rows,
        [
            "provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count",
            "aws,us-east-1,m5.xlarge,on_demand,0.15,4,16,0",
            "gcp,europe-west1,a2-highgpu-1g,spot,1.1,12,85,1",
        ],
        "{csv}"
    );
    let appliance = get(&objects, "StatefulSet", "tally-appliance");
    let pod = &appliance["spec"]["template"]["spec"];
    assert!(
        args_of(pod).contains(&"--prices=/etc/tally/prices/prices.csv".to_string()),
        "{:?}",
        args_of(pod)
    );
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts");
    assert!(
        mounts.contains(&serde_json::json!(
            {"name": "prices", "mountPath": "/etc/tally/prices", "readOnly": true}
        )),
        "{mounts:?}"
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert!(
        volumes.contains(&serde_json::json!(
            {"name": "prices", "configMap": {"name": "tally-appliance-prices"}}
        )),
        "{volumes:?}"
    );
    // A changed list changes the pod template, so the appliance restarts and loads it.
    let checksum = appliance["spec"]["template"]["metadata"]["annotations"]["checksum/prices"]
        .as_str()
        .expect("checksum/prices")
        .to_string();
    let cheaper = PRICE_OVERRIDES.replace("0.15", "0.14");
    let changed = chart_py(&["render", "--json", "--values-json", &cheaper]).expect("render");
    let changed: Value = serde_json::from_str(&changed).expect("JSON");
    let changed_sts = changed["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["object"]["kind"] == "StatefulSet")
        .expect("StatefulSet");
    assert_ne!(
        changed_sts["object"]["spec"]["template"]["metadata"]["annotations"]["checksum/prices"]
            .as_str(),
        Some(checksum.as_str())
    );

    // Nothing is rendered by default: no ConfigMap, no flag, no volume, no annotation.
    let defaults = self::objects(&VARIANTS[0]);
    assert!(find(&defaults, "ConfigMap", "tally-appliance-prices").is_none());
    let appliance = get(&defaults, "StatefulSet", "tally-appliance");
    let pod = &appliance["spec"]["template"]["spec"];
    assert!(!args_of(pod).iter().any(|a| a.starts_with("--prices")));
    assert!(!pod["volumes"].to_string().contains("prices"));
    assert!(appliance["spec"]["template"]["metadata"]["annotations"].is_null());

    // The same region, type and capacity type twice is refused by the chart, naming both.
    let twice = PRICE_OVERRIDES
        .replace("europe-west1", "us-east-1")
        .replace(
            "\"a2-highgpu-1g\",\n   \"capacityType\": \"spot\"",
            "\"m5.xlarge\",\n   \"capacityType\": \"on_demand\"",
        );
    assert_ne!(twice, PRICE_OVERRIDES);
    let (_, message) = chart_py(&["render", "--values-json", &twice])
        .map(|out| panic!("a duplicate rendered:\n{out}"))
        .unwrap_err();
    assert!(
        message.contains(
            "pricing.overrides[1]: us-east-1 m5.xlarge on_demand is already priced by pricing.overrides[0]"
        ),
        "{message}"
    );
}

#[test]
fn wrong_values_fail_the_schema_with_a_message_naming_them() {
    let cases: &[(&str, &[&str])] = &[
        ("netmon.mode=xdp", &["/netmon/mode", "conntrack", "ebpf"]),
        (
            "appliance.persistence.size=lots",
            &["/appliance/persistence/size"],
        ),
        ("appliance.retention.cpu_usage=3d", &["cpu_usage"]),
        ("collecter.enabled=false", &["collecter"]),
        (
            "appliance.queryTimeout=soon",
            &["/appliance/queryTimeout", "soon"],
        ),
        ("image.pullPolicy=Sometimes", &["/image/pullPolicy"]),
        // Price overrides: a negative price, an unknown capacity type, a missing key.
        (
            "pricing.overrides[0].provider=aws,pricing.overrides[0].region=us-east-1,\
             pricing.overrides[0].instanceType=m5.xlarge,pricing.overrides[0].capacityType=on_demand,\
             pricing.overrides[0].hourlyUsd=-1,pricing.overrides[0].cpuCores=4,\
             pricing.overrides[0].memoryGib=16",
            &["/pricing/overrides/0/hourlyUsd", "minimum"],
        ),
        (
            "pricing.overrides[0].provider=aws,pricing.overrides[0].region=us-east-1,\
             pricing.overrides[0].instanceType=m5.xlarge,pricing.overrides[0].capacityType=reserved,\
             pricing.overrides[0].hourlyUsd=1,pricing.overrides[0].cpuCores=4,\
             pricing.overrides[0].memoryGib=16",
            &["/pricing/overrides/0/capacityType", "on_demand", "spot"],
        ),
        (
            "pricing.overrides[0].provider=aws,pricing.overrides[0].region=us-east-1,\
             pricing.overrides[0].capacityType=spot,pricing.overrides[0].hourlyUsd=1,\
             pricing.overrides[0].cpuCores=4,pricing.overrides[0].memoryGib=16",
            &["/pricing/overrides/0", "instanceType"],
        ),
    ];
    for (set, needles) in cases {
        let (code, message) = chart_py(&["render", "--set", set])
            .map(|out| panic!("--set {set} rendered:\n{out}"))
            .unwrap_err();
        assert_eq!(code, 2, "--set {set}: {message}");
        assert!(message.contains("values.schema.json"), "{message}");
        for needle in *needles {
            assert!(
                message.contains(needle),
                "--set {set}: `{needle}` not in: {message}"
            );
        }
    }
    // A value of the wrong type, through --set-string (as a user quoting a boolean would).
    let (code, message) =
        chart_py(&["render", "--set-string", "collector.enabled=yes"]).unwrap_err();
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("/collector/enabled"), "{message}");
}

/// Every agent's ClusterRole in the chart is exactly its agents/<agent>/rbac.yaml, the file its
/// end-to-end tests run it under (the chart reads a copy in files/rbac/).
#[test]
fn every_agent_clusterrole_is_exactly_the_one_its_tests_run_under() {
    let rendered = objects(&VARIANTS[0]);
    for agent in ["collector", "operator", "netmon"] {
        let agent_file = repo().join(format!("agents/{agent}/rbac.yaml"));
        let chart_copy = repo().join(format!("helm/tally/files/rbac/{agent}.yaml"));
        assert_eq!(
            std::fs::read_to_string(&chart_copy).expect("chart copy"),
            std::fs::read_to_string(&agent_file).expect("agent rbac.yaml"),
            "helm/tally/files/rbac/{agent}.yaml drifted from agents/{agent}/rbac.yaml: copy it again"
        );
        let parsed: Value = serde_json::from_str(
            &chart_py(&["yaml2json", agent_file.to_str().expect("path")]).expect("yaml2json"),
        )
        .expect("JSON");
        let rules = &parsed[0]["rules"];
        assert!(rules.as_array().is_some_and(|r| !r.is_empty()), "{agent}");
        assert_eq!(
            &get(&rendered, "ClusterRole", &format!("tally-{agent}"))["rules"],
            rules,
            "{agent}"
        );
    }
}

/// The chart's CRDs are exactly what `tally-agent crds` generates from the Rust structs.
#[test]
fn the_chart_crds_are_the_ones_generated_from_the_rust_structs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(tally_agent_bin())
        .args(["crds", "--out"])
        .arg(dir.path())
        .status()
        .expect("tally-agent crds");
    assert!(status.success(), "tally-agent crds --out failed");
    let listing = |d: &Path| -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                (
                    p.file_name().expect("name").to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).expect("read"),
                )
            })
            .collect();
        files.sort();
        files
    };
    let generated = listing(dir.path());
    assert_eq!(
        generated.len(),
        3,
        "three CRDs: {:?}",
        generated.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        listing(&repo().join("helm/tally/crds")),
        generated,
        "helm/tally/crds/ differs from the Rust structs: run `tally-agent crds --out helm/tally/crds`"
    );
}

#[test]
fn the_api_server_accepts_every_rendered_object() {
    let cluster = cluster();
    let ns = TestNamespace::create(&cluster, "helm");
    for variant in VARIANTS {
        let yaml = chart_py(&set_args(
            variant,
            &[
                "render",
                "--include-crds",
                "--namespace",
                &ns.name,
                "--name",
                "tally",
            ],
        ))
        .unwrap_or_else(|(code, e)| panic!("render {} failed ({code}): {e}", variant.name));
        let expected: usize = {
            let json = chart_py(&set_args(
                variant,
                &[
                    "render",
                    "--json",
                    "--include-crds",
                    "--namespace",
                    &ns.name,
                    "--name",
                    "tally",
                ],
            ))
            .expect("render --json");
            let doc: Value = serde_json::from_str(&json).expect("JSON");
            doc["objects"].as_array().expect("objects").len()
        };
        // Client-side apply and server-side apply, both dry runs on the server: admission,
        // validation and defaulting run, nothing is stored.
        for mode in [
            &["--dry-run=server"][..],
            &[
                "--server-side",
                "--field-manager=helm",
                "--force-conflicts",
                "--dry-run=server",
            ][..],
        ] {
            let mut args = vec!["apply", "-n", ns.name.as_str(), "-f", "-", "-o", "name"];
            args.extend_from_slice(mode);
            let out = cluster
                .kubectl_stdin(&args, Some(&yaml))
                .unwrap_or_else(|e| panic!("{} ({mode:?}) refused: {e}", variant.name));
            assert_eq!(
                out.lines().filter(|l| !l.trim().is_empty()).count(),
                expected,
                "{} ({mode:?}): every object accepted: {out}",
                variant.name
            );
        }
    }
}

/// The chart's CRDs install on the real API server and the examples in helm/examples
/// validate against them; a wrong value is refused with the field named. The CRDs are
/// installed under a group of this test's own (`<namespace>.tally.dev`, same schemas), so
/// other tests using `tally.dev` are never disturbed, and are deleted at the end.
#[test]
fn the_crds_install_and_the_examples_validate() {
    let cluster = cluster();
    let mut ns = TestNamespace::create(&cluster, "helm-crd");
    let group = format!("{}.tally.dev", ns.name);
    let crd_dir = repo().join("helm/tally/crds");
    let mut crd_names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crd_dir)
        .expect("helm/tally/crds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "three CRDs in {}", crd_dir.display());
    for file in &files {
        let yaml = std::fs::read_to_string(file)
            .expect("CRD")
            .replace("tally.dev", &group);
        let crd: Value = serde_json::from_str(
            &chart_py(&["yaml2json", file.to_str().expect("path")]).expect("yaml2json"),
        )
        .expect("JSON");
        let name = crd[0]["metadata"]["name"]
            .as_str()
            .expect("CRD name")
            .replace("tally.dev", &group);
        ns.owns_cluster_object("customresourcedefinition", &name);
        cluster
            .kubectl_stdin(&["apply", "-f", "-"], Some(&yaml))
            .unwrap_or_else(|e| panic!("CRD {} refused: {e}", file.display()));
        crd_names.push(name);
    }
    for name in &crd_names {
        cluster.wait(
            &format!("CRD {name} established"),
            std::time::Duration::from_secs(60),
            || {
                let status = cluster.kubectl(&[
                    "get",
                    "crd",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ])?;
                if status == "True" {
                    Ok(())
                } else {
                    Err(format!("Established={status}"))
                }
            },
        );
    }
    let examples = repo().join("helm/examples");
    let mut kinds = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("helm/examples")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for file in &entries {
        let yaml = std::fs::read_to_string(file)
            .expect("example")
            .replace("tally.dev/v1alpha1", &format!("{group}/v1alpha1"));
        let out = cluster
            .kubectl_stdin(
                &[
                    "apply",
                    "-n",
                    &ns.name,
                    "--dry-run=server",
                    "-o",
                    "name",
                    "-f",
                    "-",
                ],
                Some(&yaml),
            )
            .unwrap_or_else(|e| panic!("example {} refused: {e}", file.display()));
        kinds.push(out.trim().split('/').next().unwrap_or("").to_string());
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            format!("nodegrouprecommendation.{group}"),
            format!("policy.{group}"),
            format!("workloadrecommendation.{group}"),
        ],
        "every kind has an example that validates"
    );
    // The schema is enforced: an unknown mode and a step over 100 % are refused, by field.
    let wrong = std::fs::read_to_string(examples.join("policy-auto-apply.yaml"))
        .expect("example")
        .replace("tally.dev/v1alpha1", &format!("{group}/v1alpha1"))
        .replace("mode: auto-apply", "mode: yolo")
        .replace("maxStepPercent: 30", "maxStepPercent: 500");
    let refused = cluster
        .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(&wrong))
        .expect_err("a Policy with mode yolo must be refused");
    assert!(refused.contains("spec.mode"), "{refused}");
    assert!(refused.contains("spec.maxStepPercent"), "{refused}");
}
