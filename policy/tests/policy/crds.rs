//! The checked-in CRDs (`policy/crds/*.yaml`) are what the types generate. To update them:
//! `mesh policy crds policy/crds` (or `UPDATE_CRDS=1 cargo test -p linkerd-policy crds`).

use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let crds = linkerd_policy::resources::crd_yamls().unwrap();
    assert_eq!(crds.len(), 7);
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, yaml) in &crds {
            std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
        }
    }
    for (name, yaml) in &crds {
        let path = dir.join(format!("{name}.yaml"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == *yaml,
            "{} drifted from the types: run `mesh policy crds policy/crds`",
            path.display()
        );
        // Each is a valid CRD document naming its group.
        assert!(yaml.contains("kind: CustomResourceDefinition"), "{name}");
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, crds.len(), "stray files in {}", dir.display());
}
