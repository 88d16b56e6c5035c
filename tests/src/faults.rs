//! A fault-injecting object store for tests: wraps a real store and fails
//! chosen operations, so every write path can be driven through outages and
//! ambiguous timeouts.
//!
//! | knob | effect |
//! |---|---|
//! | `fail_puts(n)` | the next `n` puts fail before reaching storage |
//! | `fail_gets(n)` | the next `n` reads fail |
//! | `fail_all(n)` | the next `n` operations of any kind fail |
//! | `fail_after_landing(n)` | the next `n` puts reach storage, then report an error (a timeout after the write landed) |
//! | `delay(d)` | every operation waits `d` first |

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

#[derive(Default, Debug, Clone)]
struct Plan {
    puts: usize,
    gets: usize,
    all: usize,
    after_landing: usize,
    delay: Duration,
    injected: usize,
    /// Object reads (gets) asked for, faulty or not.
    reads: usize,
}

/// A store that fails on request.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    plan: Mutex<Plan>,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault during {what}").into(),
    }
}

enum Op {
    Put,
    Get,
    Other,
}

impl Faulty {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            plan: Mutex::new(Plan::default()),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail_puts(&self, n: usize) {
        self.plan().puts = n;
    }

    pub fn fail_gets(&self, n: usize) {
        self.plan().gets = n;
    }

    pub fn fail_all(&self, n: usize) {
        self.plan().all = n;
    }

    pub fn fail_after_landing(&self, n: usize) {
        self.plan().after_landing = n;
    }

    pub fn delay(&self, d: Duration) {
        self.plan().delay = d;
    }

    /// Removes every planned fault.
    pub fn clear(&self) {
        let injected = self.plan().injected;
        let reads = self.plan().reads;
        *self.plan() = Plan {
            injected,
            reads,
            ..Plan::default()
        };
    }

    /// How many objects were read (gets) so far.
    pub fn reads(&self) -> usize {
        self.plan().reads
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> usize {
        self.plan().injected
    }

    /// Whether this operation should fail now (consuming one planned fault).
    fn trip(&self, op: Op) -> bool {
        let mut p = self.plan();
        let hit = if p.all > 0 {
            p.all -= 1;
            true
        } else {
            match op {
                Op::Put if p.puts > 0 => {
                    p.puts -= 1;
                    true
                }
                Op::Get if p.gets > 0 => {
                    p.gets -= 1;
                    true
                }
                _ => false,
            }
        };
        p.injected += usize::from(hit);
        hit
    }

    fn landing_fault(&self) -> bool {
        let mut p = self.plan();
        let hit = p.after_landing > 0;
        if hit {
            p.after_landing -= 1;
            p.injected += 1;
        }
        hit
    }

    async fn pause(&self) {
        let d = self.plan().delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.pause().await;
        if self.trip(Op::Put) {
            return Err(injected("put"));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        if self.landing_fault() {
            return Err(injected("put (after the write landed)"));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.pause().await;
        if self.trip(Op::Put) {
            return Err(injected("multipart put"));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.pause().await;
        self.plan().reads += 1;
        if self.trip(Op::Get) {
            return Err(injected("get"));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.trip(Op::Other) {
            return futures::stream::once(async { Err(injected("delete")) }).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.trip(Op::Get) {
            return futures::stream::once(async { Err(injected("list")) }).boxed();
        }
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.trip(Op::Get) {
            return futures::stream::once(async { Err(injected("list")) }).boxed();
        }
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.pause().await;
        if self.trip(Op::Get) {
            return Err(injected("list"));
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.pause().await;
        if self.trip(Op::Other) {
            return Err(injected("copy"));
        }
        self.inner.copy_opts(from, to, options).await
    }
}
