//! Template rendering with minijinja: our own Jinja templates from `templates/`, HTML-autoescaped
//! by file extension. Templates are re-read on each render so edits show without a restart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use minijinja::{path_loader, Environment};
use serde::Serialize;

pub struct Renderer {
    dir: PathBuf,
}

impl Renderer {
    pub fn new(dir: &Path) -> Self {
        Renderer { dir: dir.to_path_buf() }
    }

    fn env(&self) -> Environment<'static> {
        let mut env = Environment::new();
        if self.dir.is_dir() {
            env.set_loader(path_loader(&self.dir));
        } else {
            env.set_loader(|name| Ok(super::embedded::template(name).map(str::to_string)));
        }
        minijinja_contrib::add_to_environment(&mut env);
        env
    }

    /// Render `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String> {
        let env = self.env();
        let tmpl =
            env.get_template(name).with_context(|| format!("loading template {name} from {}", self.dir.display()))?;
        tmpl.render(ctx).with_context(|| format!("rendering template {name}"))
    }
}
