//! What a function needs for its invocations, made off the init path.
//!
//! A cold start used to build the whole [`crate::Deployment`] before the runtime asked for its
//! first event: the SDK configuration, the settings secret (a `GetSecretValue` round trip),
//! the clients and, for intake, the compiled workflows. [`Ready::start`] begins that work on a
//! task of its own at process start and returns at once, so the runtime registers and fetches
//! the first event while it runs; the first invocation awaits it ([`Ready::get`]) and every
//! later one finds it made. The init phase is then the runtime's own start (docs/benchmarks.md,
//! "Cold start"). If making it fails (a missing setting, a secret that cannot be read), that
//! invocation fails with the reason, logged, and the next one tries again: the function keeps
//! failing loudly until its configuration is fixed, as a failed init did before, without
//! being stuck on a transient error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

type Make<T> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>> + Send + Sync>;

/// A value made once, on a task started at process start (see the module doc).
pub struct Ready<T> {
    make: Make<T>,
    made: OnceCell<Arc<T>>,
    first: Mutex<Option<JoinHandle<anyhow::Result<T>>>>,
}

impl<T: Send + Sync + 'static> Ready<T> {
    /// Starts making the value now (it needs a running Tokio runtime).
    pub fn start<F, Fut>(make: F) -> Arc<Ready<T>>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let make: Make<T> = Arc::new(move || Box::pin(make()));
        let first = tokio::spawn(make());
        Arc::new(Ready {
            make,
            made: OnceCell::new(),
            first: Mutex::new(Some(first)),
        })
    }

    /// The value: the started task's, or — after it failed — made again now.
    pub async fn get(&self) -> Result<Arc<T>, lambda_runtime::Error> {
        let made = self
            .made
            .get_or_try_init(|| async {
                let first = self.first.lock().ok().and_then(|mut f| f.take());
                let value = match first {
                    Some(task) => match task.await {
                        Ok(v) => v,
                        Err(e) => Err(anyhow::anyhow!("the init task did not finish: {e}")),
                    },
                    None => (self.make)().await,
                };
                value.map(Arc::new).inspect_err(|e| {
                    tracing::error!(error = %format!("{e:#}"), "the function could not start; this invocation fails, the next one tries again");
                })
            })
            .await?;
        Ok(made.clone())
    }
}

/// Serves an HTTP function (`lambda_http`) with a router that is [`Ready`]: each request
/// waits for it (only the first ever does), then goes through it.
pub async fn serve_http(router: Arc<Ready<axum::Router>>) -> Result<(), lambda_http::Error> {
    use lambda_http::tower::ServiceExt;
    lambda_http::run(lambda_http::service_fn(move |req: lambda_http::Request| {
        let router = router.clone();
        async move {
            let app = router.get().await?;
            let resp = (*app).clone().oneshot(req).await?;
            Ok::<_, lambda_http::Error>(resp)
        }
    }))
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn made_once_and_made_again_after_a_failure() {
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let ready = Ready::start(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    anyhow::bail!("the secret could not be read")
                }
                Ok(n)
            }
        });
        let err = ready.get().await.unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        assert_eq!(*ready.get().await.unwrap(), 1, "made again");
        assert_eq!(*ready.get().await.unwrap(), 1, "and kept");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }
}
