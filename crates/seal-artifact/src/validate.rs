//! Is this wasm a component Seal can serve?
//!
//! Uses `wasmparser` (the parser wasmtime itself uses) to validate the whole
//! binary and read the top-level exports, without compiling anything.

use crate::ArtifactError;
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// The interface every Seal function must export (any 0.2.x minor version).
pub const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

/// What validation learned about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The exact export name, e.g. `wasi:http/incoming-handler@0.2.3`.
    pub handler_export: String,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// Validates that `bytes` are a WebAssembly component exporting
/// `wasi:http/incoming-handler@0.2.x`, saying precisely what is wrong if not.
pub fn validate_component(bytes: &[u8]) -> Result<ComponentInfo, ArtifactError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(ArtifactError::NotWasm);
    }
    if Parser::is_core_wasm(bytes) {
        return Err(ArtifactError::CoreModule);
    }
    if !Parser::is_component(bytes) {
        return Err(ArtifactError::InvalidComponent(
            "unknown WebAssembly binary version".into(),
        ));
    }
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| ArtifactError::InvalidComponent(e.to_string()))?;

    let mut exports = Vec::new();
    let mut imports = Vec::new();
    // Nested modules and components come inline in the payload stream; only
    // the outermost component's sections describe the artifact's world.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ArtifactError::InvalidComponent(e.to_string()))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export =
                        export.map_err(|e| ArtifactError::InvalidComponent(e.to_string()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import =
                        import.map_err(|e| ArtifactError::InvalidComponent(e.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let handler = exports.iter().find(|name| {
        name.as_str() == HTTP_HANDLER
            || name
                .strip_prefix(HTTP_HANDLER)
                .and_then(|v| v.strip_prefix("@0.2."))
                .is_some()
    });
    match handler {
        Some(h) => Ok(ComponentInfo {
            handler_export: h.clone(),
            exports,
            imports,
        }),
        None => Err(ArtifactError::NoHttpHandler {
            exports: if exports.is_empty() {
                "none".into()
            } else {
                exports.join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_core_modules_and_empty_components_are_told_apart() {
        assert!(matches!(
            validate_component(b"hello world"),
            Err(ArtifactError::NotWasm)
        ));
        assert!(matches!(
            validate_component(b"\0asm\x01\0\0\0"),
            Err(ArtifactError::CoreModule)
        ));
        assert!(matches!(
            validate_component(b"\0asm\x0d\0\x01\0"),
            Err(ArtifactError::NoHttpHandler { .. })
        ));
        assert!(matches!(
            validate_component(b"\0asm\x0d\0\x01\0\xff\xff"),
            Err(ArtifactError::InvalidComponent(_))
        ));
    }
}
