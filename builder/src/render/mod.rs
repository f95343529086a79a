//! `builder render`: cloud-init user-data for one provider, from the
//! templates in `templates/cloud-init/` (compiled into the binary) and the
//! user's values. It owns the values schema, escaping, the provider size
//! limits and the bootpatch delivery on stock images (download or embed).
//! It must not decide patch policy: the config it writes is parsed with
//! bootpatch's own parser before the document is returned.

pub mod escape;
pub mod provider;
pub mod values;

use crate::cli::RenderArgs;
use anyhow::Context as _;
use base64::Engine as _;
use minijinja::{Environment, Error as TemplateError, ErrorKind, UndefinedBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::Path;

pub use provider::Provider;
pub use values::{JoinCommand, Values};

/// Where `builder render` errors come from; callers (and tests) branch on
/// the variant, the message is for people.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("value {key}: {message}")]
    InvalidValue { key: String, message: String },
    #[error(
        "user-data for {provider} is {size} bytes, over the provider's limit of {limit} bytes ({limit_note}); {hint}"
    )]
    TooLarge {
        provider: Provider,
        size: usize,
        limit: usize,
        limit_note: &'static str,
        hint: String,
    },
    #[error("bootpatch binary: {0}")]
    Bootpatch(String),
    #[error("rendering template: {0:#}")]
    Template(#[from] TemplateError),
}

impl RenderError {
    /// A stable label for logs and exit codes.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::InvalidValue { .. } => "invalid_value",
            RenderError::TooLarge { .. } => "too_large",
            RenderError::Bootpatch(_) => "bootpatch",
            RenderError::Template(_) => "template",
        }
    }
}

/// How the node gets its bootpatch binary.
#[derive(Debug, Clone, PartialEq)]
pub enum BootpatchSource {
    /// Baked into the image by `builder build`, with its first-boot unit.
    Baked,
    /// Stock image: downloaded at first boot and checked against `sha256`.
    Url { url: String, sha256: String },
    /// Stock image: carried in the user-data (`write_files`, `gz+b64`).
    Embed {
        gz_b64: String,
        sha256: String,
        size: usize,
    },
}

/// Where the embedded binary is unpacked before it is verified and installed.
pub const EMBEDDED_PATH: &str = "/usr/local/lib/bootpatch/bootpatch.embedded";

impl BootpatchSource {
    pub fn url(url: &str, sha256: &str) -> Result<Self, RenderError> {
        // file:// serves a binary on an attached disk (and the tests).
        let scheme = ["https://", "http://", "file:///"]
            .iter()
            .any(|p| url.starts_with(p));
        if !scheme
            || url.len() <= "http://".len()
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(RenderError::Bootpatch(format!(
                "--bootpatch-url {url:?} is not an http(s):// or file:/// URL"
            )));
        }
        Ok(BootpatchSource::Url {
            url: url.to_string(),
            sha256: check_sha256(sha256)?,
        })
    }

    /// Gzips and base64-encodes a binary for `write_files`.
    pub fn embed(binary: &[u8]) -> Self {
        let sha256 = hex(&Sha256::digest(binary));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(binary).expect("writing to memory");
        let gz = gz.finish().expect("writing to memory");
        BootpatchSource::Embed {
            gz_b64: base64::engine::general_purpose::STANDARD.encode(gz),
            sha256,
            size: binary.len(),
        }
    }

    fn mode(&self) -> &'static str {
        match self {
            BootpatchSource::Baked => "baked",
            BootpatchSource::Url { .. } => "url",
            BootpatchSource::Embed { .. } => "embed",
        }
    }
}

fn check_sha256(s: &str) -> Result<String, RenderError> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(RenderError::Bootpatch(format!(
            "--bootpatch-sha256 {s:?} is not 64 hex digits"
        )));
    }
    Ok(s)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The templates, compiled in so the binary renders anywhere.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "cloud-init/_macros.j2",
        include_str!("../../../templates/cloud-init/_macros.j2"),
    ),
    (
        "cloud-init/_user-data.yaml.j2",
        include_str!("../../../templates/cloud-init/_user-data.yaml.j2"),
    ),
    (
        "cloud-init/_bootpatch-config.yaml.j2",
        include_str!("../../../templates/cloud-init/_bootpatch-config.yaml.j2"),
    ),
    (
        "cloud-init/_node-join.sh.j2",
        include_str!("../../../templates/cloud-init/_node-join.sh.j2"),
    ),
    (
        "cloud-init/_install-bootpatch.sh.j2",
        include_str!("../../../templates/cloud-init/_install-bootpatch.sh.j2"),
    ),
    (
        "cloud-init/_firstboot-unit.sh.j2",
        include_str!("../../../templates/cloud-init/_firstboot-unit.sh.j2"),
    ),
    (
        "cloud-init/_stock-dropin.conf.j2",
        include_str!("../../../templates/cloud-init/_stock-dropin.conf.j2"),
    ),
    (
        "cloud-init/aws.yaml.j2",
        include_str!("../../../templates/cloud-init/aws.yaml.j2"),
    ),
    (
        "cloud-init/azure.yaml.j2",
        include_str!("../../../templates/cloud-init/azure.yaml.j2"),
    ),
    (
        "cloud-init/gcp.yaml.j2",
        include_str!("../../../templates/cloud-init/gcp.yaml.j2"),
    ),
    (
        "cloud-init/vsphere.yaml.j2",
        include_str!("../../../templates/cloud-init/vsphere.yaml.j2"),
    ),
    (
        "cloud-init/openstack.yaml.j2",
        include_str!("../../../templates/cloud-init/openstack.yaml.j2"),
    ),
    (
        "cloud-init/nocloud.yaml.j2",
        include_str!("../../../templates/cloud-init/nocloud.yaml.j2"),
    ),
    (
        "systemd/bootpatch-firstboot.service",
        include_str!("../../../templates/systemd/bootpatch-firstboot.service"),
    ),
];

/// The template sources compiled into the binary, by name (for tests and
/// tools that check them).
pub fn template_sources() -> &'static [(&'static str, &'static str)] {
    TEMPLATES
}

/// Templates loaded and compiled once; render as many documents as needed.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
    /// The last config text bootpatch's parser accepted.
    checked_config: std::sync::Mutex<Option<String>>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        // Escaping is explicit, per place (filters below); no HTML/JSON
        // auto-escaping guessed from file names.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_filter("yq", |s: &str| escape::yaml_quote(s));
        env.add_filter("sq", |s: &str| escape::shell_quote(s));
        env.add_filter("yblock", |s: &str, indent: usize| {
            escape::yaml_block(s, indent)
        });
        env.add_filter(
            "ybool",
            |v: minijinja::Value| -> Result<&'static str, TemplateError> {
                match v.kind() {
                    minijinja::value::ValueKind::Bool if v.is_true() => Ok("true"),
                    minijinja::value::ValueKind::Bool => Ok("false"),
                    _ => Err(TemplateError::new(
                        ErrorKind::InvalidOperation,
                        format!("{v:?} is not a boolean"),
                    )),
                }
            },
        );
        env.add_filter("aptq", |s: &str| -> Result<String, TemplateError> {
            if s.chars().any(|c| c == '"' || c.is_control()) {
                return Err(TemplateError::new(
                    ErrorKind::InvalidOperation,
                    format!("{s:?} cannot sit inside apt.conf quotes"),
                ));
            }
            Ok(s.to_string())
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("built-in templates compile");
        }
        Renderer {
            env,
            checked_config: Default::default(),
        }
    }

    /// Renders the user-data for `provider`, checks the bootpatch config it
    /// carries with bootpatch's parser, and enforces the provider's limit.
    pub fn render(
        &self,
        provider: Provider,
        values: &Values,
        bootpatch: &BootpatchSource,
    ) -> Result<String, RenderError> {
        values.validate()?;
        let bootpatch_config = self.bootpatch_config(values)?;
        let doc = self.render_document(provider, values, bootpatch, &bootpatch_config)?;
        provider.check_size(doc.len(), bootpatch)?;
        Ok(doc)
    }

    /// The `/etc/bootpatch/config.yaml` text for these values, parsed back
    /// with bootpatch's own parser: a value bootpatch would refuse is an
    /// error here, naming the key.
    pub fn bootpatch_config(&self, values: &Values) -> Result<String, RenderError> {
        let text = self
            .env
            .get_template("cloud-init/_bootpatch-config.yaml.j2")?
            .render(ConfigCtx { v: values })?;
        // A fleet shares one policy: the same text needs parsing only once.
        let mut checked = self
            .checked_config
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if checked.as_deref() != Some(text.as_str()) {
            bootpatch::config::Config::from_yaml_str(&text).map_err(|e| {
                RenderError::InvalidValue {
                    key: e.key.clone().unwrap_or_else(|| ".".into()),
                    message: e.message,
                }
            })?;
            *checked = Some(text.clone());
        }
        Ok(text)
    }

    fn render_document(
        &self,
        provider: Provider,
        values: &Values,
        bootpatch: &BootpatchSource,
        bootpatch_config: &str,
    ) -> Result<String, RenderError> {
        let (hostname, fqdn) = values.hostname_fqdn();
        let join = values.join_command.as_ref().map(|j| match j {
            JoinCommand::Argv(argv) => JoinCtx {
                argv: Some(argv),
                shell: None,
            },
            JoinCommand::Shell(s) => JoinCtx {
                argv: None,
                shell: Some(s),
            },
        });
        let https = values
            .https_proxy
            .as_deref()
            .or(values.http_proxy.as_deref());
        let (url, sha256, gz_b64) = match bootpatch {
            BootpatchSource::Baked => (None, None, None),
            BootpatchSource::Url { url, sha256 } => {
                (Some(url.as_str()), Some(sha256.as_str()), None)
            }
            BootpatchSource::Embed { gz_b64, sha256, .. } => {
                (None, Some(sha256.as_str()), Some(gz_b64.as_str()))
            }
        };
        let ctx = DocCtx {
            provider: provider.name(),
            v: values,
            hostname,
            fqdn,
            bootpatch_config,
            join,
            proxy: ProxyCtx {
                http: values.http_proxy.as_deref(),
                https,
                no: values.no_proxy.as_deref(),
            },
            bootpatch: BootpatchCtx {
                mode: bootpatch.mode(),
                url,
                sha256,
                embedded_path: EMBEDDED_PATH,
                embedded_gz_b64: gz_b64,
            },
        };
        Ok(self.env.get_template(provider.template())?.render(ctx)?)
    }
}

#[derive(Serialize)]
struct ConfigCtx<'a> {
    v: &'a Values,
}

#[derive(Serialize)]
struct DocCtx<'a> {
    provider: &'static str,
    v: &'a Values,
    hostname: Option<&'a str>,
    fqdn: Option<&'a str>,
    bootpatch_config: &'a str,
    join: Option<JoinCtx<'a>>,
    proxy: ProxyCtx<'a>,
    bootpatch: BootpatchCtx<'a>,
}

#[derive(Serialize)]
struct JoinCtx<'a> {
    argv: Option<&'a Vec<String>>,
    shell: Option<&'a String>,
}

#[derive(Serialize)]
struct ProxyCtx<'a> {
    http: Option<&'a str>,
    https: Option<&'a str>,
    no: Option<&'a str>,
}

#[derive(Serialize)]
struct BootpatchCtx<'a> {
    mode: &'static str,
    url: Option<&'a str>,
    sha256: Option<&'a str>,
    embedded_path: &'static str,
    embedded_gz_b64: Option<&'a str>,
}

/// Reads the values file and `--set` overrides of `builder render`.
pub fn load_values(file: Option<&Path>, sets: &[String]) -> anyhow::Result<Values> {
    let text = match file {
        Some(p) if p == Path::new("-") => {
            Some(std::io::read_to_string(std::io::stdin()).context("reading values from stdin")?)
        }
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let values = Values::load(text.as_deref(), sets);
    match file {
        Some(p) => values.with_context(|| format!("values from {}", p.display())),
        None => Ok(values?),
    }
}

/// Works out the bootpatch source from `--bootpatch-url`, `--bootpatch-sha256`
/// and `--embed-bootpatch`.
pub fn bootpatch_source(args: &RenderArgs) -> anyhow::Result<BootpatchSource> {
    match (
        &args.bootpatch_url,
        &args.bootpatch_sha256,
        &args.embed_bootpatch,
    ) {
        (None, None, None) => Ok(BootpatchSource::Baked),
        (Some(url), Some(sha), None) => Ok(BootpatchSource::url(url, sha)?),
        (None, None, Some(path)) => {
            let bin = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(BootpatchSource::embed(&bin))
        }
        (Some(_), None, _) | (None, Some(_), None) => {
            anyhow::bail!("--bootpatch-url and --bootpatch-sha256 go together: the download is checked against the sum")
        }
        (_, _, Some(_)) => anyhow::bail!(
            "--embed-bootpatch cannot be combined with --bootpatch-url/--bootpatch-sha256"
        ),
    }
}

pub fn run(args: RenderArgs) -> anyhow::Result<i32> {
    let provider: Provider = args.provider.parse()?;
    let values = load_values(args.values.as_deref(), &args.set)?;
    let bootpatch = bootpatch_source(&args)?;
    let doc = Renderer::new().render(provider, &values, &bootpatch)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &doc).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(doc.as_bytes())
                .context("writing user-data to stdout")?;
            out.flush().context("writing user-data to stdout")?;
        }
    }
    Ok(0)
}
