//! `switchyard`: validate workflows and run them on the embedded backend.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchyard_cli::{commands, exit, local};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Durable multi-model AI pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Statically check workflow files; prints FILE:LINE:COL: message per problem.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Start a run and drive it until it ends or waits on the outside.
    Run {
        workflow: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Continue a run from its persisted state.
    Resume {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Decide an approval gate, then continue the run.
    Approve {
        run_id: String,
        step: String,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Cancel a run that has not ended.
    Cancel {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List runs, or show one with its steps and history.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The dead letters of the work and notify queues: list, show, redrive. On the embedded
    /// backend under --data-dir, or through a running API's operator routes with --api URL
    /// (the key in SWITCHYARD_OPERATOR_KEY): that is how a deployment's SQS DLQs are reached.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Run one set of inputs through two versions of a workflow and compare them: success,
    /// failures by class, validation failures, judge scores, tokens, cost, p95 latency, and
    /// the inputs whose outputs differ (step by step). Every run stays in the data dir.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// A directory of JSON input files.
        #[arg(long, required_unless_present = "runs", conflicts_with = "runs")]
        inputs: Option<PathBuf>,
        /// The inputs of runs in the data dir: `workflow=NAME[,status=S][,limit=N]`.
        #[arg(long)]
        runs: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Per workflow and step, over the runs created in a window: outcomes, failures by
    /// error class, p50/p95/p99 latency, cost, tokens, retry, fallback, validation-failure and
    /// escalation rates, judge scores, and what cascades saved against always using their top
    /// model; `--by model|prompt_version` compares each step's models or prompt versions.
    Stats {
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Runs created at most this long ago: `30m`, `24h`, `7d` (ms, s, m, h, d), from the
        /// start of that UTC hour (figures are kept per hour).
        #[arg(long, default_value = switchyard_engine::stats::DEFAULT_SINCE)]
        since: String,
        /// Also compare each step side by side per `model` or per `prompt_version`.
        #[arg(long)]
        by: Option<String>,
        /// Print one JSON document (the `GET /v1/stats` document).
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Serve the HTTP API and the webhook route, and run the workers and the notifier, in one
    /// process on the embedded backend.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Directory of workflow files to serve (subdirectories included).
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        /// Concurrent work loops (on aws: work-queue pollers).
        #[arg(long, default_value_t = switchyard_engine::pool::DEFAULT_WORKERS)]
        workers: usize,
        /// Where runs live: `embedded` (SQLite + files under --data-dir) or `aws` (DynamoDB,
        /// SQS, S3; a build with `--features aws`; resources from SWITCHYARD_TABLE etc., or
        /// provisioned on the emulator at AWS_ENDPOINT_URL).
        #[arg(long, value_enum, default_value_t = Backend::Embedded)]
        backend: Backend,
    },
    /// Serve fake OpenAI, Anthropic, Bedrock Converse and Replicate APIs with scripted behaviour.
    FakeProvider {
        #[arg(long, default_value = "127.0.0.1:9090")]
        addr: String,
        /// Secret (whsec_...) the fake signs Replicate webhooks with.
        #[arg(long)]
        webhook_secret: Option<String>,
        /// Behaviours to play first, e.g. `openai=rate_limited:2,answer;replicate=no_webhook`.
        #[arg(long)]
        script: Option<String>,
        /// How long a fake Replicate prediction takes.
        #[arg(long, default_value_t = 200)]
        replicate_delay_ms: u64,
    },
}

/// Where `dlq` acts: the embedded backend, or an API's operator routes.
#[derive(clap::Args)]
struct DlqAt {
    /// Only this queue: `work` or `notify` (both when absent).
    #[arg(long)]
    queue: Option<String>,
    /// Print JSON (the API's documents).
    #[arg(long)]
    json: bool,
    #[arg(long, conflicts_with = "api")]
    data_dir: Option<PathBuf>,
    /// A running API (`switchyard dev` on either backend, or the deployed intake URL); the
    /// operator key is read from SWITCHYARD_OPERATOR_KEY.
    #[arg(long, env = "SWITCHYARD_API_URL")]
    api: Option<String>,
}

impl DlqAt {
    fn target<'a>(&'a self, dir: &'a std::path::Path) -> switchyard_cli::dlq::Target<'a> {
        match &self.api {
            Some(url) => switchyard_cli::dlq::Target::Api(url),
            None => switchyard_cli::dlq::Target::Embedded(dir),
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters with their run, tenant, workflow, step, receive count, time and reason.
    List {
        #[command(flatten)]
        at: DlqAt,
    },
    /// One dead letter, with its raw body.
    Show {
        id: String,
        #[command(flatten)]
        at: DlqAt,
    },
    /// Put dead letters back on their queue (visible now, receive count reset): every one
    /// with --all, or those listed. Safe to repeat: wake-ups re-plan from the stored state.
    Redrive {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        at: DlqAt,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    Embedded,
    Aws,
}

#[derive(Subcommand)]
enum RunsCommand {
    List {
        #[command(flatten)]
        args: commands::ListArgs,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run an old run's input again on a changed definition and print, step by step, what
    /// changed (status, output paths, tokens, cost, latency). Unchanged calls are answered
    /// from the tape the run kept (its workflow's `tape: true`, or SWITCHYARD_TAPES=1) or from
    /// --tape DIR (a recording); changed ones reach the provider (or, with --offline, fail
    /// loudly).
    Replay {
        run_id: String,
        /// The changed workflow file.
        #[arg(long)]
        workflow: PathBuf,
        /// A recording of the run's provider calls (SWITCHYARD_RECORD=DIR when it ran),
        /// instead of the tape the run kept.
        #[arg(long)]
        tape: Option<PathBuf>,
        /// Never call a provider: a call the tape lacks fails its step.
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Rerun an ended run as a new run linked to it, from a step (default: the first that
    /// failed): the steps that do not depend on it and succeeded are reused, not called
    /// again. Without RUN_ID, reruns every matching run (`--status`, `--workflow`,
    /// `--since`, `--error-class`; at most `--limit`, 100) once; `--dry-run` only lists them.
    Rerun {
        run_id: Option<String>,
        /// The step to rerun from (with every step that depends on it).
        #[arg(long, requires = "run_id")]
        from: Option<String>,
        /// A new input (JSON file, `-` for stdin) instead of the old run's.
        #[arg(long, requires = "run_id")]
        input: Option<PathBuf>,
        /// Rerun on the newest version of the workflow in --workflows (refused, saying why,
        /// when a reused step is defined differently there).
        #[arg(long, requires = "run_id")]
        latest: bool,
        /// Where --latest reads workflow files.
        #[arg(long, default_value = "workflows")]
        workflows: PathBuf,
        /// Bulk: `failed` (default) or `cancelled`.
        #[arg(long, conflicts_with = "run_id")]
        status: Option<String>,
        #[arg(long, conflicts_with = "run_id")]
        workflow: Option<String>,
        /// Bulk: runs created at most this long ago (`6h`, `7d`).
        #[arg(long, conflicts_with = "run_id")]
        since: Option<String>,
        #[arg(long, conflicts_with = "run_id")]
        error_class: Option<String>,
        #[arg(long, conflicts_with = "run_id")]
        dry_run: bool,
        #[arg(long, conflicts_with = "run_id")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    {
        // The span exporter, if any, sends on the runtime.
        let _in_runtime = runtime.enter();
        init_tracing();
    }
    if let Command::Validate { paths } = &cli.command {
        std::process::exit(commands::validate(paths));
    }
    let dir = |d: &Option<PathBuf>| local::data_dir(d.as_deref());
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Validate { .. } => Ok(exit::SUCCEEDED),
            Command::Run {
                workflow,
                input,
                json,
                data_dir,
            } => commands::run(workflow, input, *json, &dir(data_dir)).await,
            Command::Resume {
                run_id,
                json,
                data_dir,
            } => commands::resume(run_id, *json, &dir(data_dir)).await,
            Command::Approve {
                run_id,
                step,
                reject,
                comment,
                json,
                data_dir,
            } => {
                commands::approve(
                    run_id,
                    step,
                    *reject,
                    comment.clone(),
                    *json,
                    &dir(data_dir),
                )
                .await
            }
            Command::Cancel {
                run_id,
                json,
                data_dir,
            } => commands::cancel(run_id, *json, &dir(data_dir)).await,
            Command::Runs {
                command: RunsCommand::List { args, data_dir },
            } => commands::runs_list(args, &dir(data_dir)).await,
            Command::Runs {
                command:
                    RunsCommand::Show {
                        run_id,
                        json,
                        data_dir,
                    },
            } => commands::runs_show(run_id, *json, &dir(data_dir)).await,
            Command::Runs {
                command:
                    RunsCommand::Replay {
                        run_id,
                        workflow,
                        tape,
                        offline,
                        json,
                        data_dir,
                    },
            } => {
                switchyard_cli::replay::replay(
                    run_id,
                    workflow,
                    tape.as_deref(),
                    *offline,
                    *json,
                    &dir(data_dir),
                )
                .await
            }
            Command::Runs {
                command:
                    RunsCommand::Rerun {
                        run_id,
                        from,
                        input,
                        latest,
                        workflows,
                        status,
                        workflow,
                        since,
                        error_class,
                        dry_run,
                        limit,
                        json,
                        data_dir,
                    },
            } => {
                use switchyard_cli::rerun;
                match run_id {
                    Some(id) => {
                        let one = rerun::One {
                            run_id: id,
                            from: from.as_deref(),
                            input: input.as_deref(),
                            latest: latest.then_some(workflows.as_path()),
                        };
                        rerun::one(one, *json, &dir(data_dir)).await
                    }
                    None => match rerun::bulk_query(
                        status.as_deref(),
                        workflow.clone(),
                        since.clone(),
                        error_class.as_deref(),
                        *dry_run,
                        *limit,
                    ) {
                        Ok(q) => rerun::many(q, *json, &dir(data_dir)).await,
                        Err(e) => Err(e),
                    },
                }
            }
            Command::Compare {
                a,
                b,
                inputs,
                runs,
                json,
                data_dir,
            } => {
                use switchyard_cli::compare::{compare, Inputs};
                let from = match (inputs, runs) {
                    (Some(d), _) => Inputs::Dir(d.clone()),
                    (None, Some(f)) => Inputs::Runs(f.clone()),
                    (None, None) => Inputs::Runs(String::new()),
                };
                compare(a, b, from, *json, &dir(data_dir)).await
            }
            Command::Dlq { command } => {
                use switchyard_cli::dlq::{self, Which};
                match command {
                    DlqCommand::List { at } => {
                        let d = dir(&at.data_dir);
                        dlq::list(at.target(&d), at.queue.as_deref(), at.json).await
                    }
                    DlqCommand::Show { id, at } => {
                        let d = dir(&at.data_dir);
                        dlq::show(at.target(&d), id, at.queue.as_deref(), at.json).await
                    }
                    DlqCommand::Redrive { ids, all, at } => {
                        let d = dir(&at.data_dir);
                        let which = if *all {
                            Which::All
                        } else {
                            Which::Ids(ids.clone())
                        };
                        dlq::redrive(at.target(&d), at.queue.as_deref(), which, at.json).await
                    }
                }
            }
            Command::Stats {
                workflow,
                since,
                by,
                json,
                data_dir,
            } => {
                commands::stats(
                    workflow.as_deref(),
                    since,
                    by.as_deref(),
                    *json,
                    &dir(data_dir),
                )
                .await
            }
            Command::Dev {
                addr,
                data_dir,
                workflows,
                workers,
                backend,
            } => {
                let args = switchyard_cli::dev::DevArgs {
                    addr: *addr,
                    data_dir: dir(data_dir),
                    workflows: workflows.clone(),
                    workers: *workers,
                };
                match backend {
                    Backend::Embedded => switchyard_cli::dev::dev(args).await,
                    Backend::Aws if data_dir.is_some() => Err(exit::UsageError(
                        "--data-dir is for --backend embedded: on aws, runs live in DynamoDB and S3"
                            .into(),
                    )
                    .into()),
                    Backend::Aws => switchyard_cli::dev::dev_aws(args).await,
                }
            }
            Command::FakeProvider {
                addr,
                webhook_secret,
                script,
                replicate_delay_ms,
            } => {
                commands::fake_provider(
                    addr,
                    webhook_secret.clone(),
                    script.as_deref(),
                    *replicate_delay_ms,
                )
                .await
            }
        }
    });
    // `exit` runs no destructors: spans still buffered are exported now.
    #[cfg(feature = "otel")]
    switchyard_otel::shutdown();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // A data dir that cannot be opened is a usage problem, not a run failure.
            std::process::exit(exit::status_of(&e));
        }
    }
}

/// Logs on stderr at `SWITCHYARD_LOG` (default `error`); with `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set, spans exported over OTLP as `switchyard` too (docs/traces.md).
fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| "error".into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otel")]
    {
        match switchyard_otel::Otel::from_env("switchyard") {
            Ok(otel) => {
                let layer = otel.map(|o| o.install().layer());
                registry.with(layer).init();
            }
            Err(e) => {
                registry.init();
                eprintln!("warning: {e}; traces are not exported");
            }
        }
    }
    #[cfg(not(feature = "otel"))]
    registry.init();
}
