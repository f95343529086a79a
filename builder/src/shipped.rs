//! What the builder carries with it, so an installed `builder` (outside any
//! checkout) builds images: the shipped specs of `images/` and the first-boot
//! unit of `templates/systemd/`, compiled in as the cloud-init templates are.

/// The shipped specs by name, as in `images/NAME.yaml`.
pub const SPECS: [(&str, &str); 3] = [
    ("debian-12", include_str!("../../images/debian-12.yaml")),
    ("debian-13", include_str!("../../images/debian-13.yaml")),
    (
        "ubuntu-24.04",
        include_str!("../../images/ubuntu-24.04.yaml"),
    ),
];

/// The spec `builder build` uses when none is named.
pub const DEFAULT: &str = "debian-12";

/// The first-boot unit baked into every image: its file name and text.
pub const FIRSTBOOT_UNIT: (&str, &str) = (
    "bootpatch-firstboot.service",
    include_str!("../../templates/systemd/bootpatch-firstboot.service"),
);

/// A shipped spec's text by name.
pub fn spec(name: &str) -> Option<&'static str> {
    SPECS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The shipped names, for messages.
pub fn names() -> String {
    SPECS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn shipped_specs_are_the_files_and_parse() {
        for (name, text) in super::SPECS {
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../images")
                .join(format!("{name}.yaml"));
            assert_eq!(std::fs::read_to_string(file).unwrap(), text);
            let s = crate::spec::parse(text, name).unwrap();
            assert_eq!(s.name, name);
        }
        assert!(super::spec(super::DEFAULT).is_some());
        assert!(super::spec("debian-11").is_none());
    }
}
