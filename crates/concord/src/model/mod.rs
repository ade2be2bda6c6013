//! The library's models and the `Syncable` contract they share.
//!
//! A model is described once, by `#[derive(Syncable)]`, as a static [`ModelInfo`]:
//! its name, table, ownership and fields. The store builds its tables from that
//! description and the merge code works on it generically, so the conflict rules
//! live in one place (`sync/apply/`) rather than once per model. The contract
//! is in [`contract`], the models in [`types`]; this file lists them.

mod contract;
mod types;

pub use contract::*;
pub use types::*;

/// Every library model, in dependency order (a model comes after those it references).
pub fn registry() -> &'static [&'static ModelInfo] {
    static MODELS: [&ModelInfo; 10] = [
        Device::INFO,
        Tag::INFO,
        Album::INFO,
        Volume::INFO,
        Location::INFO,
        FileEntry::INFO,
        TagAssignment::INFO,
        AlbumItem::INFO,
        UserMetadata::INFO,
        Conduit::INFO,
    ];
    &MODELS
}

/// Look a model up by its wire name.
pub fn model_by_name(name: &str) -> Option<&'static ModelInfo> {
    registry().iter().copied().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn registry_is_in_dependency_order() {
        let models = registry();
        for (i, m) in models.iter().enumerate() {
            for dep in m.depends_on {
                let pos = models.iter().position(|x| x.name == *dep);
                assert!(
                    matches!(pos, Some(p) if p < i),
                    "{} depends on {dep}, which must come first",
                    m.name
                );
            }
        }
    }

    #[test]
    fn derived_uuid_is_stable_and_distinct() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(derived_uuid("x", &[a, b]), derived_uuid("x", &[a, b]));
        assert_ne!(derived_uuid("x", &[a, b]), derived_uuid("x", &[b, a]));
        assert_ne!(derived_uuid("x", &[a]), derived_uuid("y", &[a]));
    }
}
