//! One deployment's wiring, built once per container (cold start) and shared by every
//! invocation: the settings, the AWS clients, the ports on DynamoDB, SQS and S3, the providers
//! and the bundled workflows, and the [`Engine`] over them.
//!
//! Settings come through the `Secrets` seam: the Secrets Manager secret named by
//! `SWITCHYARD_SECRET_ID` (read once, here) layered over the function's environment, which
//! holds only resource names (template.yaml sets them). Nothing slow runs that an invocation
//! does not need: building SDK clients does no I/O, and the secret is one `GetSecretValue`.

use crate::bundle;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use switchyard_aws::{s3_client, DynamoStore, S3BlobStore, SqsQueue, SqsQueueUrls, SqsQueues};
use switchyard_core::model::ModelInfo;
use switchyard_core::ports::{EnvSecrets, QueueName, Secrets};
use switchyard_core::time::SystemClock;
use switchyard_engine::notifier::Notifier;
use switchyard_engine::{Config, Engine, Providers, Workflows};
use switchyard_providers::local::{LocalConfig, LocalProvider};

/// The table, bucket, queues and secret of a deployment (docs/configuration.md#aws-resources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub table: String,
    pub bucket: String,
    /// Key prefix of the content-addressed blobs (`SWITCHYARD_BLOB_PREFIX`, default `blobs/`).
    pub blob_prefix: String,
    pub work: SqsQueueUrls,
    pub notify: SqsQueueUrls,
    /// `SWITCHYARD_SECRET_ID`: the Secrets Manager secret with the settings map, if any.
    pub secret_id: Option<String>,
    /// Path-style S3 addressing (`SWITCHYARD_S3_PATH_STYLE=1`; default: on when
    /// `AWS_ENDPOINT_URL` points at an emulator).
    pub s3_path_style: bool,
}

/// The work queue's `maxReceiveCount` when `SWITCHYARD_MAX_RECEIVE_COUNT` is unset (the
/// template's default).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

fn required(env: &dyn Secrets, name: &str) -> Result<String> {
    env.get(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| anyhow!("{name} is not set (template.yaml sets it; see docs/deploy.md)"))
}

impl Resources {
    /// Reads the resource names; an error names the missing or malformed variable.
    pub fn from_env(env: &dyn Secrets) -> Result<Resources> {
        let max_receive_count = match env.get("SWITCHYARD_MAX_RECEIVE_COUNT") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    anyhow!("SWITCHYARD_MAX_RECEIVE_COUNT `{v}` is not a whole number ≥ 1")
                })?,
            None => DEFAULT_MAX_RECEIVE_COUNT,
        };
        let s3_path_style = match env
            .get("SWITCHYARD_S3_PATH_STYLE")
            .as_deref()
            .map(str::trim)
        {
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            Some(v) => return Err(anyhow!("SWITCHYARD_S3_PATH_STYLE `{v}`: expected 1 or 0")),
            None => env.get("AWS_ENDPOINT_URL").is_some(),
        };
        Ok(Resources {
            table: required(env, "SWITCHYARD_TABLE")?,
            bucket: required(env, "SWITCHYARD_BUCKET")?,
            blob_prefix: env
                .get("SWITCHYARD_BLOB_PREFIX")
                .unwrap_or_else(|| "blobs/".into()),
            work: SqsQueueUrls {
                url: required(env, "SWITCHYARD_WORK_QUEUE_URL")?,
                dlq_url: required(env, "SWITCHYARD_WORK_DLQ_URL")?,
                max_receive_count,
            },
            // The notify queue's redrive count is the notifier's attempt limit: the template
            // sets it from the same constant (docs/deploy.md).
            notify: SqsQueueUrls {
                url: required(env, "SWITCHYARD_NOTIFY_QUEUE_URL")?,
                dlq_url: required(env, "SWITCHYARD_NOTIFY_DLQ_URL")?,
                max_receive_count: switchyard_engine::notifier::MAX_NOTIFY_ATTEMPTS,
            },
            secret_id: env
                .get("SWITCHYARD_SECRET_ID")
                .filter(|v| !v.trim().is_empty()),
            s3_path_style,
        })
    }
}

/// The secret's settings over the environment: a name set in both means the secret's value.
pub struct Layered {
    pub secret: BTreeMap<String, String>,
}

impl Secrets for Layered {
    fn get(&self, name: &str) -> Option<String> {
        self.secret
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .or_else(|| EnvSecrets.get(name))
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all = EnvSecrets.with_prefix(prefix);
        all.retain(|(k, _)| !self.secret.contains_key(k));
        all.extend(
            self.secret
                .iter()
                .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        all
    }
}

/// The settings map of the secret `resources.secret_id` names (empty when none is named).
pub async fn load_settings(
    sdk: &aws_types::SdkConfig,
    resources: &Resources,
) -> Result<BTreeMap<String, String>> {
    match &resources.secret_id {
        Some(id) => {
            let client = aws_sdk_secretsmanager::Client::new(sdk);
            switchyard_aws::secrets::load_secret_map(&client, id)
                .await
                .with_context(|| format!("reading the settings secret `{id}`"))
        }
        None => Ok(BTreeMap::new()),
    }
}

/// The SDK clients the ports use.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// From one SDK configuration (`path_style`: S3 path-style addressing, for emulators).
    pub fn new(sdk: &aws_types::SdkConfig, path_style: bool) -> Clients {
        let sdk = &switchyard_aws::with_timeouts(sdk);
        Clients {
            dynamo: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            s3: s3_client(sdk, path_style),
        }
    }

    /// The same, with `interceptor` on every client (a request meter:
    /// `switchyard_aws::metrics::Meter`, cargo feature `meter`).
    pub fn with_interceptor<I>(
        sdk: &aws_types::SdkConfig,
        path_style: bool,
        interceptor: I,
    ) -> Clients
    where
        I: aws_sdk_dynamodb::config::Intercept + Clone + 'static,
    {
        let sdk = &switchyard_aws::with_timeouts(sdk);
        Clients {
            dynamo: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(sdk)
                    .interceptor(interceptor.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(sdk)
                    .interceptor(interceptor.clone())
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(sdk)
                    .force_path_style(path_style)
                    .interceptor(interceptor)
                    .build(),
            ),
        }
    }
}

/// Everything an invocation needs.
pub struct Deployment {
    pub engine: Engine,
    /// The receiving side of each queue (the notifier changes visibility on its records).
    pub work: Arc<SqsQueue>,
    pub notify: Arc<SqsQueue>,
    pub secrets: Arc<dyn Secrets>,
    pub resources: Resources,
    /// The built-in provider, whose async jobs' callbacks the worker sends (`callbacks`).
    pub local: Arc<LocalProvider>,
    /// The engine's metrics, written as EMF lines at the end of each invocation
    /// ([`crate::emf`]).
    pub emf: Arc<crate::emf::EmfSink>,
}

impl Deployment {
    /// Both queues' receiving sides, for the operator routes' dead letters.
    pub fn inboxes(&self) -> switchyard_engine::deadletters::Inboxes {
        switchyard_engine::deadletters::Inboxes {
            work: self.work.clone(),
            notify: self.notify.clone(),
        }
    }
}

/// Which Lambda function a deployment is wired for (its `init phases` log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Intake,
    Worker,
    Webhook,
    Notifier,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Intake => "intake",
            Function::Worker => "worker",
            Function::Webhook => "webhook",
            Function::Notifier => "notifier",
        }
    }
}

/// The settings secret's entry `name`, or an error naming it and what is lost without it (a
/// function that cannot work without a setting fails every invocation with this reason in the
/// log — `crate::ready` — instead of serving some requests wrongly).
pub fn required_setting(secrets: &dyn Secrets, name: &str, why: &str) -> Result<String> {
    secrets
        .get(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            anyhow!("{name} is not in the settings secret: {why} (put it there; docs/deploy.md)")
        })
}

/// The lease-owner prefix of this container: each `handle` call adds its own suffix.
fn owner() -> String {
    let stream = std::env::var("AWS_LAMBDA_LOG_STREAM_NAME").unwrap_or_default();
    let tag = if stream.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        stream
    };
    format!("aws:{tag}")
}

impl Deployment {
    /// Intake's wiring, from the process environment and the settings secret: the only
    /// function that compiles the bundled workflows (it starts runs by name and serves the
    /// console). Logs how long each init phase took (`init phases`: the SDK configuration,
    /// the settings secret, the wiring).
    pub async fn from_env() -> Result<Deployment> {
        Deployment::from_env_with(Function::Intake, &bundled).await
    }

    /// The worker's or the webhook's wiring: they run pinned definitions read from the blob
    /// store, so their cold start compiles nothing — and, since nothing here reaches
    /// [`bundle::workflows`], their binaries link no workflow compiler or YAML parser.
    pub async fn from_env_pinned(function: Function) -> Result<Deployment> {
        Deployment::from_env_with(function, &|_| Ok(Workflows::new())).await
    }

    async fn from_env_with(
        function: Function,
        workflows: &(dyn Fn(&[ModelInfo]) -> Result<Workflows> + Sync),
    ) -> Result<Deployment> {
        let start = Start::from_env().await?;
        let d =
            Deployment::with_workflows(start.clients, start.resources, start.settings, workflows)?;
        start.phases.log(function, d.engine.workflows.list().len());
        Ok(d)
    }

    /// With `settings` standing for the secret's map (tests), serving the bundled workflows.
    pub fn with_settings(
        sdk: &aws_types::SdkConfig,
        resources: Resources,
        settings: BTreeMap<String, String>,
    ) -> Result<Deployment> {
        let clients = Clients::new(sdk, resources.s3_path_style);
        Deployment::with_clients(clients, resources, settings)
    }

    /// With clients made by the caller (`make bench-aws` attaches a request meter to them).
    pub fn with_clients(
        clients: Clients,
        resources: Resources,
        settings: BTreeMap<String, String>,
    ) -> Result<Deployment> {
        Deployment::with_workflows(clients, resources, settings, &bundled)
    }

    /// With `settings` standing for the secret's map, serving what `workflows` compiles
    /// against the deployment's models: `switchyard dev --backend aws` reads a directory at
    /// start-up instead of the set bundled at build time.
    pub fn with_workflows(
        clients: Clients,
        resources: Resources,
        settings: BTreeMap<String, String>,
        workflows: &dyn Fn(&[ModelInfo]) -> Result<Workflows>,
    ) -> Result<Deployment> {
        let secrets: Arc<dyn Secrets> = Arc::new(Layered { secret: settings });
        let hosted = switchyard_providers::registry::from_secrets(secrets.clone())
            .map_err(|e| anyhow!("providers: {e}"))?;
        let local = Arc::new(LocalProvider::new(LocalConfig::default()));
        let mut providers = Providers::new().with(local.clone());
        for p in hosted.providers {
            providers = providers.with(p);
        }
        let workflows = workflows(&providers.models())?;
        let (queues, store, blobs) = ports(clients, &resources);
        let mut config = Config::from_secrets(secrets.as_ref(), owner(), "http://127.0.0.1:9000");
        // A short retry backoff is waited for in the invocation: cheaper than the round trip.
        config.wait_in_invocation_ms = switchyard_engine::WAIT_IN_INVOCATION_MS;
        // Free steps' records ride on the run's end write: one header write, not one per step.
        config.hold_free_records = true;
        let work = Arc::new(queues.queue(QueueName::Work));
        let notify = Arc::new(queues.queue(QueueName::Notify));
        let engine = Engine::new(
            Arc::new(store),
            Arc::new(queues),
            Arc::new(blobs),
            Arc::new(SystemClock),
            Arc::new(providers),
            Arc::new(workflows),
            config,
        );
        let emf = Arc::new(crate::emf::EmfSink::from_env());
        let engine = engine.with_metrics(emf.clone());
        // Spans join each run's trace when this process exports them.
        #[cfg(feature = "otel")]
        let engine = switchyard_otel::join(engine);
        Ok(Deployment {
            engine,
            work,
            notify,
            secrets,
            resources,
            local,
            emf,
        })
    }
}

/// The workflows bundled into the binary, compiled against the deployment's models (only
/// intake's wiring and the tests' reach this, so only they link the compiler).
fn bundled(models: &[ModelInfo]) -> Result<Workflows> {
    bundle::workflows(models).map_err(|e| anyhow!("{e}"))
}

/// The queues, the state store and the blob store of a deployment, over its clients.
fn ports(clients: Clients, resources: &Resources) -> (SqsQueues, DynamoStore, S3BlobStore) {
    let queues = SqsQueues::new(
        clients.sqs,
        resources.work.clone(),
        resources.notify.clone(),
    );
    let store = DynamoStore::new(clients.dynamo, resources.table.clone());
    let blobs =
        S3BlobStore::new(clients.s3, resources.bucket.clone()).with_prefix(&resources.blob_prefix);
    (queues, store, blobs)
}

/// What every function reads first: the SDK configuration (from the environment), the
/// resource names, the settings secret, and the clients — with how long each phase took.
struct Start {
    clients: Clients,
    resources: Resources,
    settings: BTreeMap<String, String>,
    phases: Phases,
}

/// When each init phase ended, from the start of [`Start::from_env`].
struct Phases {
    started: std::time::Instant,
    sdk: std::time::Duration,
    settings: std::time::Duration,
}

impl Start {
    async fn from_env() -> Result<Start> {
        let started = std::time::Instant::now();
        let sdk = switchyard_aws::environment_config(&|name| std::env::var(name).ok())
            .map_err(|e| anyhow!("the AWS SDK configuration: {e}"))?;
        let sdk_done = started.elapsed();
        let resources = Resources::from_env(&EnvSecrets)?;
        let settings = load_settings(&sdk, &resources).await?;
        let settings_done = started.elapsed();
        Ok(Start {
            clients: Clients::new(&sdk, resources.s3_path_style),
            resources,
            settings,
            phases: Phases {
                started,
                sdk: sdk_done,
                settings: settings_done,
            },
        })
    }
}

impl Phases {
    /// The `init phases` log line: the SDK configuration, the settings secret, the wiring.
    fn log(&self, function: Function, workflows: usize) {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let done = self.started.elapsed();
        tracing::info!(
            function = function.name(),
            sdk_config_ms = ms(self.sdk),
            settings_ms = ms(self.settings - self.sdk),
            wiring_ms = ms(done - self.settings),
            workflows,
            "init phases"
        );
    }
}

/// The notifier function's wiring: a [`Notifier`] over the table, the bucket and the notify
/// queue, with no engine — no workflows, providers or work queue — so the function links none
/// of the workflow compiler, the schema validator, the templates or the provider adapters
/// (docs/architecture.md, "Lean on AWS").
pub struct NotifierDeployment {
    pub notifier: Notifier,
    /// The notify queue's receiving side (the notifier changes visibility on its records).
    pub notify: Arc<SqsQueue>,
    pub emf: Arc<crate::emf::EmfSink>,
}

impl NotifierDeployment {
    /// From the process environment and the settings secret, like [`Deployment::from_env`].
    pub async fn from_env() -> Result<NotifierDeployment> {
        let start = Start::from_env().await?;
        let d = NotifierDeployment::with_clients(start.clients, start.resources, start.settings);
        start.phases.log(Function::Notifier, 0);
        Ok(d)
    }

    /// With clients made by the caller and `settings` standing for the secret's map (tests).
    pub fn with_clients(
        clients: Clients,
        resources: Resources,
        settings: BTreeMap<String, String>,
    ) -> NotifierDeployment {
        let secrets = Layered { secret: settings };
        let (queues, store, blobs) = ports(clients, &resources);
        let config = Config::from_secrets(&secrets, owner(), "http://127.0.0.1:9000");
        let emf = Arc::new(crate::emf::EmfSink::from_env());
        let notifier = Notifier::new(
            Arc::new(store),
            Arc::new(blobs),
            Arc::new(SystemClock),
            config,
        )
        .with_metrics(emf.clone());
        #[cfg(feature = "otel")]
        let notifier = switchyard_otel::join_notifier(notifier);
        NotifierDeployment {
            notifier,
            notify: Arc::new(queues.queue(QueueName::Notify)),
            emf,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_required_setting_names_itself_when_missing_or_blank() {
        let secrets = Layered {
            secret: BTreeMap::from([
                ("SWITCHYARD_TEST_SET".to_string(), "v".to_string()),
                ("SWITCHYARD_TEST_BLANK".to_string(), "  ".to_string()),
            ]),
        };
        assert_eq!(
            required_setting(&secrets, "SWITCHYARD_TEST_SET", "x").unwrap(),
            "v"
        );
        for name in ["SWITCHYARD_TEST_BLANK", "SWITCHYARD_TEST_UNSET_ANYWHERE"] {
            let e = required_setting(&secrets, name, "nothing works").unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
            assert!(e.to_string().contains("nothing works"), "{e}");
        }
    }
}
