//! What a function needs for its invocations, made off the init path.
//!
//! A cold start used to build the whole [`crate::Deployment`] before the runtime asked for its
//! first event: the SDK configuration (its HTTPS client reads the system's root certificates),
//! the settings secret (a `GetSecretValue` round trip), the clients and, for intake, the
//! compiled workflows — ~6 ms of a ~11 ms init on the bench's local Runtime API. A [`Ready`]
//! makes it on first use instead: the first invocation makes it ([`Ready::get`]) and every
//! later one finds it made, so the init phase is the runtime's own start (docs/benchmarks.md,
//! "On AWS"). The work is the same, it is only done after the init: the cold start as a caller
//! sees it (init and first invocation) is unchanged. (Spawning it at process start instead,
//! to overlap with the runtime's first request, put its CPU-bound part — the SDK's set-up —
//! back before that request on the functions' one thread: measured, it gained nothing.)
//!
//! If making it fails (a missing setting, a secret that cannot be read), that invocation fails
//! with the reason, logged, and the next one tries again: the function keeps failing loudly
//! until its configuration is fixed, as a failed init did before, without being stuck on a
//! transient error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::OnceCell;

type Make<T> =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>> + Send + Sync>;

/// A value made on first use, and made again by the next use if that failed (see the module
/// doc).
pub struct Ready<T> {
    make: Make<T>,
    made: OnceCell<Arc<T>>,
}

impl<T: Send + Sync + 'static> Ready<T> {
    pub fn new<F, Fut>(make: F) -> Arc<Ready<T>>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        Arc::new(Ready {
            make: Box::new(move || Box::pin(make())),
            made: OnceCell::new(),
        })
    }

    /// The value, made now if no use made it yet.
    pub async fn get(&self) -> Result<Arc<T>, lambda_runtime::Error> {
        let made = self
            .made
            .get_or_try_init(|| async {
                (self.make)().await.map(Arc::new).inspect_err(|e| {
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
        let ready = Ready::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    anyhow::bail!("the secret could not be read")
                }
                Ok(n)
            }
        });
        assert_eq!(
            tries.load(Ordering::SeqCst),
            0,
            "nothing is made before its first use"
        );
        let err = ready.get().await.unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        assert_eq!(*ready.get().await.unwrap(), 1, "made again");
        assert_eq!(*ready.get().await.unwrap(), 1, "and kept");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }
}
