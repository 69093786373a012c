//! The configuration compiler (`hepfwd check-config`, start and reload) on arbitrary text:
//! it never panics, and every error names the file and a position inside the text (line
//! 1..=lines + 1, column ≥ 1) and a non-empty field.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match hep_user::config::compile(path, text) {
        Ok(plan) => {
            // A compiled plan names its listeners and destinations.
            for d in &plan.destinations {
                assert!(!d.name.is_empty(), "a destination without a name");
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error list without errors");
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert_eq!(e.file, path, "{e}");
                assert!(e.line >= 1 && e.line <= lines, "line outside the text: {e}");
                assert!(e.column >= 1, "column 0: {e}");
                assert!(!e.field.is_empty(), "no field: {e}");
                assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
            }
        }
    }
});
