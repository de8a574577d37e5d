//! What can be checked of the Kubernetes manifests (`deploy/kubernetes`) without a cluster:
//! the kustomize base lists every manifest of its folder; what `kubectl kustomize` assembles
//! passes PyPI's `kubernetes-validate` (the API's own schemas, strict: no unknown field) for
//! every core kind; every agent of the team is one hardened Deployment with probes, resources
//! and a shutdown grace longer than the agents'; each specialist scales with KEDA on its own
//! durable consumer; the gateway's Service reaches its port; the stream set-up, the NATS Helm
//! values and the addresses the manifests use agree; and every variable they set is documented.
//!
//! What it cannot check: that any of it runs. KEDA's `ScaledObject` is no core kind, so no
//! schema checks it beyond the fields read here; the NATS chart is not rendered (it is not
//! vendored, and the chart repository is out of reach offline). The README says so.
//!
//! The validator is installed into `.tools/` by `scripts/test` (or named by
//! `KUBERNETES_VALIDATE`); `kubectl` (or `KUBECTL`) assembles the base. Either missing fails
//! the test, saying how to get it: nothing here is skipped.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use choreo_bus::settings::HumanDuration;
use choreo_bus::{Namespace, RuntimeConfig};
use choreo_testkit::team::TEAM;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const FOLDER: &str = "deploy/kubernetes";
/// Values for the NATS Helm chart: in the folder, but no kustomize resource.
const NATS_VALUES: &str = "nats-values.yaml";
/// The NATS Helm release the README installs, and its namespace.
const NATS_RELEASE: &str = "nats";
const NATS_NAMESPACE: &str = "nats";
/// The agents KEDA scales on their consumer's lag.
const SPECIALISTS: [&str; 4] = ["security", "performance", "style", "tests"];
/// Kubernetes versions whose schemas the manifests must pass: a few minors back, and the newest
/// the pinned validator ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// The image's non-root user (the Dockerfile's `USER`).
const IMAGE_USER: u64 = 65532;
/// Variables the manifests set that the README's configuration table does not list yet.
const NOT_YET_DOCUMENTED: [&str; 0] = [];

use choreo_testkit::workspace_root as root;

use choreo_testkit::workspace_file as read;

fn yaml<T: DeserializeOwned>(what: &str, text: &str) -> T {
    serde_saphyr::from_str(text).unwrap_or_else(|err| panic!("{what}: {err}"))
}

/// The base as `kubectl kustomize` assembles it.
fn assembled() -> &'static str {
    static ASSEMBLED: OnceLock<String> = OnceLock::new();
    ASSEMBLED.get_or_init(|| {
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
        let output = Command::new(&kubectl)
            .arg("kustomize")
            .arg(root().join(FOLDER))
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {kubectl} ({err}): kubectl assembles {FOLDER} (`kubectl \
                     kustomize`, kustomize built in). This project's machines have it \
                     (tested with 1.32, kustomize 5.5); elsewhere install it, or name one \
                     with KUBECTL"
                )
            });
        assert!(
            output.status.success(),
            "`{kubectl} kustomize {FOLDER}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    })
}

/// Every resource of the assembled base, as plain values; [`Base::of`] reads them typed.
#[derive(Debug)]
struct Base(Vec<Value>);

impl Base {
    fn load() -> Base {
        let all: Vec<Value> = serde_saphyr::from_multiple(assembled())
            .unwrap_or_else(|err| panic!("the assembled base: {err}"));
        Base(all.into_iter().filter(|v| !v.is_null()).collect())
    }

    fn of<T: DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.0
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| {
                serde_json::from_value(r.clone())
                    .unwrap_or_else(|err| panic!("{kind} {}: {err}", r["metadata"]["name"]))
            })
            .collect()
    }

    fn deployments(&self) -> Vec<Workload> {
        self.of("Deployment")
    }

    fn deployment(&self, name: &str) -> Workload {
        self.deployments()
            .into_iter()
            .find(|d| d.metadata.name == name)
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    /// The shared settings: the one ConfigMap every container takes its environment from.
    fn settings(&self) -> ConfigMap {
        let mut maps: Vec<ConfigMap> = self.of("ConfigMap");
        assert_eq!(maps.len(), 1, "one ConfigMap of shared settings");
        maps.remove(0)
    }
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ConfigMap {
    metadata: Metadata,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A Deployment or a Job: what both hold the same way.
#[derive(Debug, Deserialize)]
struct Workload {
    metadata: Metadata,
    spec: WorkloadSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSpec {
    replicas: Option<u32>,
    backoff_limit: Option<u32>,
    template: PodTemplate,
}

#[derive(Debug, Deserialize)]
struct PodTemplate {
    metadata: Option<TemplateMetadata>,
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
struct TemplateMetadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    termination_grace_period_seconds: Option<u64>,
    security_context: Option<SecurityContext>,
    restart_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    env_from: Vec<EnvFrom>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    resources: Option<ResourceRequirements>,
    security_context: Option<SecurityContext>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvSource>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    secret_key_ref: Option<KeyRef>,
}

#[derive(Debug, Deserialize)]
struct KeyRef {
    name: String,
    key: String,
    optional: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFrom {
    config_map_ref: Option<NameRef>,
}

#[derive(Debug, Deserialize)]
struct NameRef {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Debug, Deserialize)]
struct HttpGet {
    path: String,
    /// A port's name or number.
    port: Value,
}

#[derive(Debug, Deserialize)]
struct ResourceRequirements {
    #[serde(default)]
    requests: BTreeMap<String, Value>,
    #[serde(default)]
    limits: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    run_as_non_root: Option<bool>,
    run_as_user: Option<u64>,
    read_only_root_filesystem: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Option<Capabilities>,
}

#[derive(Debug, Deserialize)]
struct Capabilities {
    #[serde(default)]
    drop: Vec<String>,
}

impl Workload {
    /// The one container: every workload of the base runs one binary.
    fn container(&self) -> &Container {
        let containers = &self.spec.template.spec.containers;
        assert_eq!(containers.len(), 1, "{}: one container", self.metadata.name);
        &containers[0]
    }

    fn template_labels(&self) -> BTreeMap<String, String> {
        self.spec
            .template
            .metadata
            .as_ref()
            .map(|m| m.labels.clone())
            .unwrap_or_default()
    }

    /// Runs as the image's non-root user with a read-only root, no privilege escalation and
    /// no capabilities, with requests and limits, taking the shared settings.
    fn assert_hardened(&self, settings: &ConfigMap) {
        let name = &self.metadata.name;
        let pod = &self.spec.template.spec;
        let pod_context = pod.security_context.as_ref();
        let container = self.container();
        let context = container
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: the container has no security context"));
        let non_root = context
            .run_as_non_root
            .or(pod_context.and_then(|c| c.run_as_non_root));
        let user = context
            .run_as_user
            .or(pod_context.and_then(|c| c.run_as_user));
        assert_eq!(non_root, Some(true), "{name}: runAsNonRoot");
        assert_eq!(
            user,
            Some(IMAGE_USER),
            "{name}: runAsUser is the image's user"
        );
        assert_eq!(
            context.read_only_root_filesystem,
            Some(true),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            context.allow_privilege_escalation,
            Some(false),
            "{name}: allowPrivilegeEscalation"
        );
        let dropped = context
            .capabilities
            .as_ref()
            .map(|c| c.drop.clone())
            .unwrap_or_default();
        assert!(
            dropped.iter().any(|c| c == "ALL"),
            "{name}: drops ALL capabilities, not {dropped:?}"
        );

        let resources = container
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no resources"));
        for resource in ["cpu", "memory"] {
            assert!(
                resources.requests.contains_key(resource),
                "{name}: requests {resource}"
            );
            assert!(
                resources.limits.contains_key(resource),
                "{name}: limits {resource}"
            );
        }

        assert!(
            container.image.starts_with("choreo:"),
            "{name}: runs the choreo image, not {}",
            container.image
        );
        assert!(
            container
                .env_from
                .iter()
                .filter_map(|e| e.config_map_ref.as_ref())
                .any(|r| r.name == settings.metadata.name),
            "{name}: takes the shared settings (ConfigMap {})",
            settings.metadata.name
        );
        // Secrets come from a Secret, never written into a manifest.
        for var in &container.env {
            if is_secret(&var.name) {
                let from = var
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .unwrap_or_else(|| panic!("{name}: {} is not from a Secret", var.name));
                assert_eq!(
                    from.key, var.name,
                    "{name}: the Secret's key is the variable"
                );
            }
        }
    }

    /// Liveness and readiness are HTTP probes on a port the container declares; that port.
    fn assert_probed(&self) -> u16 {
        let name = &self.metadata.name;
        let container = self.container();
        let mut ports = BTreeSet::new();
        for (kind, probe) in [
            ("liveness", &container.liveness_probe),
            ("readiness", &container.readiness_probe),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{name}: no {kind} probe (httpGet)"));
            ports.insert(container.port(&get.port, name));
        }
        assert_eq!(ports.len(), 1, "{name}: both probes ask one port");
        ports.into_iter().next().expect("a port")
    }

    fn env(&self, variable: &str) -> Option<&EnvVar> {
        self.container().env.iter().find(|e| e.name == variable)
    }
}

impl Container {
    /// A port given by name or number, as a number the container declares.
    fn port(&self, port: &Value, workload: &str) -> u16 {
        let number = match port {
            Value::String(name) => {
                self.ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("{workload}: no container port named {name}"))
                    .container_port
            }
            other => other
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| panic!("{workload}: port {other}")),
        };
        assert!(
            self.ports.iter().any(|p| p.container_port == number),
            "{workload}: port {number} is not declared"
        );
        number
    }
}

/// Whether a variable holds a secret (a token, key, password or seed), by its name.
fn is_secret(variable: &str) -> bool {
    ["TOKEN", "KEY", "SECRET", "PASSWORD", "SEED"]
        .iter()
        .any(|word| variable.contains(word))
}

/// The port of an address like `0.0.0.0:8080`.
fn listen_port(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} is not host:port"))
}

#[derive(Debug, Deserialize)]
struct Kustomization {
    namespace: String,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
struct Patch {
    path: String,
}

#[test]
fn the_kustomization_lists_every_manifest_of_its_folder() {
    let kustomization: Kustomization = yaml(
        "kustomization.yaml",
        &read(&format!("{FOLDER}/kustomization.yaml")),
    );
    let mut listed = BTreeSet::new();
    for path in kustomization
        .resources
        .iter()
        .chain(kustomization.patches.iter().map(|p| &p.path))
    {
        assert!(listed.insert(path.clone()), "{path} is listed twice");
        assert!(
            root().join(FOLDER).join(path).is_file(),
            "kustomization.yaml lists {path}, which is not in {FOLDER}"
        );
    }
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(root().join(FOLDER)).expect(FOLDER) {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != NATS_VALUES {
            present.insert(name);
        }
    }
    let unlisted: Vec<&String> = present.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "in {FOLDER} but not in kustomization.yaml (so never applied): {unlisted:?}"
    );

    // Everything lands in the base's namespace, which the base creates.
    let namespaces: Vec<Value> = Base::load().of("Namespace");
    assert_eq!(namespaces.len(), 1);
    assert_eq!(namespaces[0]["metadata"]["name"], kustomization.namespace);
}

/// The validator: `KUBERNETES_VALIDATE`, or where `scripts/test` installs it.
fn validator() -> PathBuf {
    let path = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/kubernetes-validate/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate is not at {}: scripts/test installs it (PyPI kubernetes-validate, \
         pinned, into .tools/kubernetes-validate); or name one with KUBERNETES_VALIDATE",
        path.display()
    );
    path
}

#[test]
fn the_assembled_manifests_pass_the_kubernetes_schemas() {
    let resources = Base::load();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("choreo.yaml");
    std::fs::write(&file, assembled()).expect("write the assembled base");

    let mut command = Command::new(validator());
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = command
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // What it refused or could not check (it passes a kind it has no schema for with a
    // warning: only KEDA's may be one), first lines first; the rest say what passed.
    let objections: Vec<&str> = report
        .lines()
        .filter(|line| {
            let passed = line.starts_with("INFO ");
            let keda_unknown = line.starts_with("WARN ")
                && line.contains("kind ScaledObject with api version keda.sh/");
            !(passed || keda_unknown)
        })
        .take(20)
        .collect();
    assert!(
        output.status.success() && objections.is_empty(),
        "kubernetes-validate refused the assembled base (`kubectl kustomize {FOLDER}` shows \
         it):\n{}",
        objections.join("\n")
    );
    // And every other resource, against every version, was checked and passed.
    let mut core = 0;
    for resource in &resources.0 {
        let kind = resource["kind"].as_str().expect("a kind");
        if kind == "ScaledObject" {
            continue;
        }
        core += 1;
        let name = resource["metadata"]["name"].as_str().expect("a name");
        for version in KUBERNETES_VERSIONS {
            let minor = version.rsplit_once('.').expect("x.y.z").0;
            let passed = format!(
                "passed for resource {}/{name} against version {minor}",
                kind.to_lowercase()
            );
            assert!(
                report.lines().any(|l| l.ends_with(&passed)),
                "{kind} {name} was not validated against {minor}:\n{report}"
            );
        }
    }
    assert!(core >= TEAM.len() + 4, "only {core} core resources");
}

/// CHOREO_SHUTDOWN_GRACE as a Deployment sees it: its own variable, the shared settings', or
/// the runtime's default.
fn shutdown_grace(deployment: &Workload, settings: &ConfigMap) -> Duration {
    let text = deployment
        .env("CHOREO_SHUTDOWN_GRACE")
        .and_then(|e| e.value.clone())
        .or_else(|| settings.data.get("CHOREO_SHUTDOWN_GRACE").cloned());
    match text {
        Some(text) => {
            let parsed: HumanDuration = text
                .parse()
                .unwrap_or_else(|err| panic!("CHOREO_SHUTDOWN_GRACE={text}: {err}"));
            parsed.0
        }
        None => RuntimeConfig::default().shutdown_grace,
    }
}

#[test]
fn every_agent_of_the_team_is_a_hardened_deployment_with_probes() {
    let resources = Base::load();
    let settings = resources.settings();
    let deployments = resources.deployments();
    let mut expected: BTreeSet<String> = TEAM.iter().map(|b| b.to_string()).collect();
    expected.insert("choreo-gateway".to_string());
    let run: BTreeSet<String> = deployments
        .iter()
        .map(|d| d.container().command.join(" "))
        .collect();
    assert_eq!(
        run, expected,
        "the Deployments run the team and the gateway, each once"
    );

    for binary in TEAM {
        let agent = binary.strip_prefix("choreo-").expect("choreo-<agent>");
        let matching: Vec<&Workload> = deployments
            .iter()
            .filter(|d| d.container().command == [binary])
            .collect();
        assert_eq!(matching.len(), 1, "{binary} is one Deployment");
        let deployment = matching[0];
        // Named after the agent, as its durable consumer is: what a ScaledObject scales.
        assert_eq!(deployment.metadata.name, agent, "{binary}'s Deployment");
        deployment.assert_hardened(&settings);

        // Probed where the agent is told to serve its health.
        let port = deployment.assert_probed();
        let listen = deployment
            .env("CHOREO_METRICS_LISTEN")
            .and_then(|e| e.value.as_deref())
            .unwrap_or_else(|| panic!("{agent}: CHOREO_METRICS_LISTEN"));
        assert_eq!(listen_port(listen), port, "{agent}: probes its own port");

        // Killed only after running handlers had their grace and handed their events back.
        let grace = shutdown_grace(deployment, &settings);
        let termination = deployment
            .spec
            .template
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30);
        assert!(
            Duration::from_secs(termination) > grace,
            "{agent}: terminationGracePeriodSeconds {termination} is not longer than \
             CHOREO_SHUTDOWN_GRACE ({grace:?})"
        );
    }
}

#[test]
fn the_gateway_serves_its_port_through_a_service_with_tokens_from_a_secret() {
    let resources = Base::load();
    let settings = resources.settings();
    let gateway = resources
        .deployments()
        .into_iter()
        .find(|d| d.container().command == ["choreo-gateway"])
        .expect("a Deployment runs choreo-gateway");
    gateway.assert_hardened(&settings);
    let probed = gateway.assert_probed();
    let container = gateway.container();
    let paths: Vec<&str> = [&container.liveness_probe, &container.readiness_probe]
        .iter()
        .filter_map(|p| p.as_ref()?.http_get.as_ref())
        .map(|g| g.path.as_str())
        .collect();
    assert_eq!(paths, ["/healthz", "/readyz"], "the gateway's own routes");

    let listen = gateway
        .env("CHOREO_GATEWAY_LISTEN")
        .and_then(|e| e.value.as_deref())
        .expect("CHOREO_GATEWAY_LISTEN");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "listens beyond the pod: {listen}"
    );
    let port = listen_port(listen);
    assert_eq!(probed, port, "probed where it listens");

    let tokens = gateway
        .env("CHOREO_GATEWAY_TOKENS")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("CHOREO_GATEWAY_TOKENS from a Secret");
    assert_ne!(
        tokens.optional,
        Some(true),
        "a gateway without tokens refuses every event: the Secret is required"
    );
    assert!(!tokens.name.is_empty());

    #[derive(Debug, Deserialize)]
    struct Service {
        spec: ServiceSpec,
    }
    #[derive(Debug, Deserialize)]
    struct ServiceSpec {
        selector: BTreeMap<String, String>,
        ports: Vec<ServicePort>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ServicePort {
        port: u16,
        target_port: Value,
    }
    let services: Vec<Service> = resources.of("Service");
    let labels = gateway.template_labels();
    let service = services
        .iter()
        .find(|s| {
            s.spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .expect("a Service selecting the gateway's pods");
    assert!(!service.spec.selector.is_empty());
    assert!(
        service
            .spec
            .ports
            .iter()
            .any(|p| p.port == 8080 && container.port(&p.target_port, "gateway") == port),
        "the Service's port 8080 reaches the gateway's {port}"
    );
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObject {
    api_version: String,
    metadata: Metadata,
    spec: ScaledObjectSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObjectSpec {
    scale_target_ref: ScaleTargetRef,
    min_replica_count: Option<u32>,
    max_replica_count: Option<u32>,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize)]
struct ScaleTargetRef {
    name: String,
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Trigger {
    r#type: String,
    metadata: JetStreamTrigger,
}

/// The nats-jetstream scaler's metadata. KEDA's metadata values are strings: a number here
/// would be refused by its CRD.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JetStreamTrigger {
    nats_server_monitoring_endpoint: String,
    account: String,
    stream: String,
    consumer: String,
    lag_threshold: String,
    activation_lag_threshold: Option<String>,
}

/// The fields of KEDA's ScaledObject spec (keda.sh docs, "ScaledObject specification") and of
/// the nats-jetstream scaler ("NATS JetStream" scaler page). No schema here knows KEDA's kinds,
/// and an unknown field is a typo that KEDA refuses or, in a trigger's metadata, ignores.
const KEDA_FIELDS: [(&str, &[&str]); 4] = [
    (
        "/spec",
        &[
            "scaleTargetRef",
            "pollingInterval",
            "cooldownPeriod",
            "initialCooldownPeriod",
            "idleReplicaCount",
            "minReplicaCount",
            "maxReplicaCount",
            "fallback",
            "advanced",
            "triggers",
        ],
    ),
    (
        "/spec/scaleTargetRef",
        &["name", "kind", "apiVersion", "envSourceContainerName"],
    ),
    (
        "/spec/triggers/0",
        &[
            "type",
            "name",
            "metadata",
            "metricType",
            "useCachedMetrics",
            "authenticationRef",
        ],
    ),
    (
        "/spec/triggers/0/metadata",
        &[
            "natsServerMonitoringEndpoint",
            "account",
            "stream",
            "consumer",
            "lagThreshold",
            "activationLagThreshold",
            "useHttps",
        ],
    ),
];

/// Every key of the object at each pointer is one of its known keys.
fn assert_known_keys(what: &str, value: &Value, known: &[(&str, &[&str])]) {
    for (pointer, keys) in known {
        let Some(object) = value.pointer(pointer).and_then(Value::as_object) else {
            continue;
        };
        for key in object.keys() {
            assert!(
                keys.contains(&key.as_str()),
                "{what}: {pointer}/{key} is not a known field (known: {keys:?})"
            );
        }
    }
}

#[test]
fn each_specialist_scales_with_keda_on_its_own_consumer_lag() {
    let resources = Base::load();
    let values = nats_values();
    for object in resources.0.iter().filter(|r| r["kind"] == "ScaledObject") {
        assert_known_keys(
            &format!("ScaledObject {}", object["metadata"]["name"]),
            object,
            &KEDA_FIELDS,
        );
    }
    let scaled: Vec<ScaledObject> = resources.of("ScaledObject");
    let agents: BTreeSet<&str> = TEAM
        .iter()
        .map(|b| b.strip_prefix("choreo-").expect("choreo-<agent>"))
        .collect();
    for specialist in SPECIALISTS {
        assert!(
            agents.contains(specialist),
            "{specialist} is an agent of the team"
        );
    }

    let mut targets = BTreeSet::new();
    for object in &scaled {
        let name = &object.metadata.name;
        let spec = &object.spec;
        assert!(
            object.api_version.starts_with("keda.sh/"),
            "{name}: {}",
            object.api_version
        );
        let target = &spec.scale_target_ref;
        assert!(
            matches!(target.kind.as_deref(), None | Some("Deployment")),
            "{name} scales a Deployment"
        );
        assert!(
            targets.insert(target.name.clone()),
            "{} is scaled twice",
            target.name
        );
        let deployment = resources.deployment(&target.name);
        assert_eq!(
            deployment.spec.replicas, None,
            "{}: KEDA sets its replicas, so the Deployment must not (each apply would reset them)",
            target.name
        );
        let min = spec.min_replica_count.unwrap_or(0);
        let max = spec.max_replica_count.unwrap_or(100);
        assert!(min <= max && max > 1, "{name}: replicas {min}..{max}");

        assert_eq!(spec.triggers.len(), 1, "{name}: one trigger");
        let trigger = &spec.triggers[0];
        assert_eq!(trigger.r#type, "nats-jetstream", "{name}");
        let metadata = &trigger.metadata;
        assert!(
            agents.contains(metadata.consumer.as_str()),
            "{name}: consumer {} is no agent of the team",
            metadata.consumer
        );
        // The consumer is the durable of the agent this Deployment runs: its name.
        let runs = deployment.container().command.join(" ");
        assert_eq!(
            format!("choreo-{}", metadata.consumer),
            runs,
            "{name}: consumer {} is not the durable of {runs}, which the Deployment runs",
            metadata.consumer
        );
        assert!(
            !resources.settings().data.contains_key("CHOREO_NAMESPACE"),
            "a namespace other than the default renames the stream the triggers read"
        );
        assert_eq!(
            metadata.stream,
            Namespace::default().stream_name(),
            "{name}: the events stream"
        );
        assert_eq!(metadata.account, "$G", "{name}: NATS's default account");
        let threshold: u64 = metadata
            .lag_threshold
            .parse()
            .unwrap_or_else(|_| panic!("{name}: lagThreshold {}", metadata.lag_threshold));
        assert!(threshold > 0, "{name}: lagThreshold");
        if let Some(activation) = &metadata.activation_lag_threshold {
            activation
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}: activationLagThreshold {activation}"));
        }
        // Through the headless Service KEDA can reach each server by name, as it must to ask
        // the one leading the consumer.
        assert_eq!(
            metadata.nats_server_monitoring_endpoint,
            format!(
                "{NATS_RELEASE}-headless.{NATS_NAMESPACE}.svc.cluster.local:{}",
                values.config.monitor.port
            ),
            "{name}: the NATS release's monitoring port"
        );
    }
    let specialists: BTreeSet<String> = SPECIALISTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        targets, specialists,
        "each specialist, and only they, scale"
    );
}

/// The NATS chart's values this test reads.
#[derive(Debug, Deserialize)]
struct NatsValues {
    config: NatsConfig,
}

#[derive(Debug, Deserialize)]
struct NatsConfig {
    cluster: ClusterValues,
    jetstream: JetStreamValues,
    monitor: MonitorValues,
}

#[derive(Debug, Deserialize)]
struct ClusterValues {
    enabled: bool,
    replicas: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JetStreamValues {
    enabled: bool,
    file_store: FileStoreValues,
}

#[derive(Debug, Deserialize)]
struct FileStoreValues {
    enabled: bool,
    dir: String,
    pvc: PvcValues,
}

#[derive(Debug, Deserialize)]
struct PvcValues {
    enabled: bool,
    size: String,
}

#[derive(Debug, Deserialize)]
struct MonitorValues {
    enabled: bool,
    port: u16,
}

/// The chart's keys nats-values.yaml may use, as chart 2.14.2's values.yaml names them; what
/// is under the last one of a path is the chart's business. Helm ignores a misspelt key
/// without a word, so any other key fails here: check it against the chart, then add it.
const CHART_KEYS: [&str; 11] = [
    "config.cluster.enabled",
    "config.cluster.replicas",
    "config.jetstream.enabled",
    "config.jetstream.fileStore.enabled",
    "config.jetstream.fileStore.dir",
    "config.jetstream.fileStore.pvc.enabled",
    "config.jetstream.fileStore.pvc.size",
    "config.jetstream.fileStore.pvc.storageClassName",
    "config.monitor.enabled",
    "config.monitor.port",
    "podTemplate.topologySpreadConstraints",
];

/// Every key path of `value`, down to a path of [`CHART_KEYS`], is one of them.
fn assert_chart_keys(path: &str, value: &Value) {
    if CHART_KEYS.contains(&path) {
        return;
    }
    match value.as_object() {
        Some(object) => {
            for (key, inner) in object {
                let inner_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                assert_chart_keys(&inner_path, inner);
            }
        }
        None => panic!(
            "{NATS_VALUES}: {path} is not a key checked against the NATS chart (known: \
             {CHART_KEYS:?})"
        ),
    }
}

fn nats_values() -> NatsValues {
    let text = read(&format!("{FOLDER}/{NATS_VALUES}"));
    assert_chart_keys("", &yaml::<Value>(NATS_VALUES, &text));
    yaml(NATS_VALUES, &text)
}

/// The README's "Kubernetes" section.
fn readme_kubernetes() -> String {
    read("README.md")
        .split("\n## ")
        .find(|s| s.starts_with("Kubernetes"))
        .expect("a Kubernetes section in the README")
        .to_string()
}

#[test]
fn the_stream_set_up_the_nats_values_and_the_readme_agree() {
    let resources = Base::load();
    let settings = resources.settings();
    let values = nats_values();

    // Three servers in a JetStream cluster, storing on a volume each, monitored.
    let config = &values.config;
    assert!(config.cluster.enabled && config.cluster.replicas >= 3);
    assert!(config.jetstream.enabled, "JetStream");
    let store = &config.jetstream.file_store;
    assert!(
        store.enabled && store.pvc.enabled && !store.dir.is_empty() && !store.pvc.size.is_empty(),
        "file storage on a volume"
    );
    assert!(config.monitor.enabled, "the monitoring port KEDA reads");

    // The streams get as many copies as there are servers.
    let jobs: Vec<Workload> = resources.of("Job");
    assert_eq!(jobs.len(), 1, "one Job: the stream set-up");
    let job = &jobs[0];
    job.assert_hardened(&settings);
    assert_eq!(
        job.container().command,
        [
            "choreo",
            "streams",
            "ensure",
            "--replicas",
            &config.cluster.replicas.to_string()
        ],
        "the streams get a copy on each of the {} servers",
        config.cluster.replicas
    );
    assert!(
        matches!(
            job.spec.template.spec.restart_policy.as_deref(),
            Some("OnFailure" | "Never")
        ) && job.spec.backoff_limit.unwrap_or(6) > 0,
        "retried while NATS starts"
    );

    // The agents reach the release's client Service.
    assert_eq!(
        settings.data.get("NATS_URL").map(String::as_str),
        Some(format!("nats://{NATS_RELEASE}.{NATS_NAMESPACE}.svc.cluster.local:4222").as_str()),
        "NATS_URL is the Service of the Helm release {NATS_RELEASE} in {NATS_NAMESPACE}"
    );
    assert_eq!(
        settings.data.get("CHOREO_LOG_FORMAT").map(String::as_str),
        Some("json")
    );

    // The README installs that release from the official chart with these values.
    let readme = readme_kubernetes();
    for needed in [
        "helm repo add nats https://nats-io.github.io/k8s/helm/charts/".to_string(),
        format!("helm install {NATS_RELEASE} nats/nats"),
        format!("--namespace {NATS_NAMESPACE}"),
        format!("--values {FOLDER}/{NATS_VALUES}"),
        format!("kubectl apply -k {FOLDER}"),
    ] {
        assert!(
            readme.contains(&needed),
            "the README's Kubernetes paragraph lacks `{needed}`"
        );
    }
}

#[test]
fn every_variable_the_manifests_set_is_documented_and_no_secret_is_in_plain_sight() {
    let resources = Base::load();
    let mut variables: BTreeSet<String> = resources.settings().data.keys().cloned().collect();
    let in_plain_sight: Vec<&String> = variables.iter().filter(|v| is_secret(v)).collect();
    assert!(
        in_plain_sight.is_empty(),
        "secrets in the ConfigMap: {in_plain_sight:?}; they belong in the Secret"
    );
    let workloads = resources
        .deployments()
        .into_iter()
        .chain(resources.of::<Workload>("Job"));
    for workload in workloads {
        variables.extend(workload.container().env.iter().map(|e| e.name.clone()));
    }
    let documented = choreo_testkit::documented_variables();
    let missing: Vec<&String> = variables
        .iter()
        .filter(|v| !documented.contains(*v) && !NOT_YET_DOCUMENTED.contains(&v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "set by the manifests but not in the README's configuration table: {missing:?}"
    );
    let readme = readme_kubernetes();
    for pending in NOT_YET_DOCUMENTED {
        assert!(
            documented.contains(pending) || readme.contains(pending),
            "{pending} is neither in the configuration table nor explained in the README's \
             Kubernetes paragraph"
        );
    }
}
