//! What one deployment serves: providers by name, workflows by name and version.

use std::collections::HashMap;
use std::sync::Arc;
use switchyard_core::model::{split_model, ModelInfo, Provider};
use switchyard_core::workflow::Workflow;

#[derive(Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
}

impl Providers {
    pub fn new() -> Providers {
        Providers::default()
    }

    pub fn with(mut self, p: Arc<dyn Provider>) -> Providers {
        self.by_name.insert(p.name().to_string(), p);
        self
    }

    /// The provider serving a `provider/model` id.
    pub fn for_model(&self, model: &str) -> Option<Arc<dyn Provider>> {
        self.by_name.get(split_model(model).0).cloned()
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.by_name.get(name).cloned()
    }

    /// Every model every provider offers (the catalog static checks use).
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut all: Vec<ModelInfo> = self.by_name.values().flat_map(|p| p.models()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

#[derive(Default)]
pub struct Workflows {
    by_name: HashMap<String, Vec<Arc<Workflow>>>,
}

impl Workflows {
    pub fn new() -> Workflows {
        Workflows::default()
    }

    pub fn add(&mut self, wf: Workflow) {
        let list = self.by_name.entry(wf.name.clone()).or_default();
        list.retain(|w| w.version != wf.version);
        list.push(Arc::new(wf));
    }

    /// A workflow by name, at a version or the one added last.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<Workflow>> {
        let list = self.by_name.get(name)?;
        match version {
            Some(v) => list.iter().find(|w| w.version == v).cloned(),
            None => list.last().cloned(),
        }
    }

    /// (name, versions) pairs, sorted.
    pub fn list(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .by_name
            .iter()
            .map(|(n, l)| (n.clone(), l.iter().map(|w| w.version.clone()).collect()))
            .collect();
        out.sort();
        out
    }
}
