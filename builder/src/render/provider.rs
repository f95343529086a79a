//! The providers user-data is rendered for, and the size each accepts
//! (`../shared/REFERENCE.md`). Limits are on the document as `builder render`
//! writes it; where the provider counts bytes after base64, the raw limit is
//! the largest size whose base64 still fits.

use super::{BootpatchSource, RenderError};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Aws,
    Azure,
    Gcp,
    Vsphere,
    Openstack,
    Nocloud,
}

/// Bytes of base64 for `n` raw bytes (padded).
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The largest raw size whose base64 fits in `encoded` bytes.
pub const fn raw_limit_for_base64(encoded: usize) -> usize {
    encoded / 4 * 3
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Aws,
        Provider::Azure,
        Provider::Gcp,
        Provider::Vsphere,
        Provider::Openstack,
        Provider::Nocloud,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
            Provider::Vsphere => "vsphere",
            Provider::Openstack => "openstack",
            Provider::Nocloud => "nocloud",
        }
    }

    pub fn template(self) -> &'static str {
        match self {
            Provider::Aws => "cloud-init/aws.yaml.j2",
            Provider::Azure => "cloud-init/azure.yaml.j2",
            Provider::Gcp => "cloud-init/gcp.yaml.j2",
            Provider::Vsphere => "cloud-init/vsphere.yaml.j2",
            Provider::Openstack => "cloud-init/openstack.yaml.j2",
            Provider::Nocloud => "cloud-init/nocloud.yaml.j2",
        }
    }

    /// The largest document, in bytes as rendered, and what the provider's
    /// own rule is. NoCloud reads a file from a volume: no limit.
    pub fn limit(self) -> Option<(usize, &'static str)> {
        match self {
            Provider::Aws => Some((16384, "EC2 user data: 16384 bytes before base64")),
            Provider::Azure => Some((65535, "Azure customData: 65535 bytes decoded")),
            Provider::Gcp => Some((
                262144,
                "GCE metadata: 262144 bytes per value, 512 KB for all metadata",
            )),
            Provider::Vsphere => Some((
                raw_limit_for_base64(65536),
                "vSphere guestinfo: 64 KiB per value, base64-encoded: 49152 bytes raw",
            )),
            Provider::Openstack => Some((
                raw_limit_for_base64(65535),
                "Nova user_data: 65535 bytes after base64: 49149 bytes raw",
            )),
            Provider::Nocloud => None,
        }
    }

    /// Errors when a document of `size` bytes is over the limit, saying what
    /// to do instead.
    pub fn check_size(self, size: usize, bootpatch: &BootpatchSource) -> Result<(), RenderError> {
        let Some((limit, limit_note)) = self.limit() else {
            return Ok(());
        };
        if size <= limit {
            return Ok(());
        }
        let hint = match bootpatch {
            BootpatchSource::Embed { gz_b64, size: bin, .. } => format!(
                "the embedded bootpatch binary ({bin} bytes, {} bytes as gzip+base64) does not fit: \
                 use an image with bootpatch baked in (`builder build`), or download it at first boot \
                 with --bootpatch-url URL --bootpatch-sha256 HEX instead of --embed-bootpatch",
                gz_b64.len()
            ),
            _ => format!(
                "gzip it (`gzip -9`; cloud-init unpacks gzip'd user-data, and {} takes it), \
                 move large content (keys, scripts) behind a download URL, or use a baked image",
                self.name()
            ),
        };
        Err(RenderError::TooLarge {
            provider: self,
            size,
            limit,
            limit_note,
            hint,
        })
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Provider::ALL.iter().map(|p| p.name()).collect();
                anyhow::anyhow!("unknown provider {s:?} (one of: {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_limits_are_exact() {
        let os = raw_limit_for_base64(65535);
        assert_eq!(os, 49149);
        assert!(base64_len(os) <= 65535 && base64_len(os + 1) > 65535);
        let vs = raw_limit_for_base64(65536);
        assert_eq!(vs, 49152);
        assert!(base64_len(vs) <= 65536 && base64_len(vs + 1) > 65536);
    }

    #[test]
    fn limits_at_the_boundary() {
        for p in Provider::ALL {
            let Some((limit, _)) = p.limit() else {
                assert!(p.check_size(usize::MAX, &BootpatchSource::Baked).is_ok());
                continue;
            };
            assert!(p.check_size(limit, &BootpatchSource::Baked).is_ok(), "{p}");
            let e = p
                .check_size(limit + 1, &BootpatchSource::Baked)
                .unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(p.name()), "{msg}");
            assert!(msg.contains(&(limit + 1).to_string()), "{msg}");
            assert!(msg.contains(&limit.to_string()), "{msg}");
        }
    }

    #[test]
    fn names_parse() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>().unwrap(), p);
        }
        assert!("ec2".parse::<Provider>().is_err());
    }
}
