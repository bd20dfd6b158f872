//! Every message, field, oneof, enum, enum value, service and method of `sipmba.v1` carries a
//! doc comment: the contracts are the API documentation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

#[test]
fn every_element_of_the_contracts_is_documented() {
    let set = FileDescriptorSet::decode(sipmba_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut missing = Vec::new();
    let mut files = 0;
    for file in &set.file {
        let Some(name) = file.name.as_deref() else {
            continue;
        };
        if !name.starts_with("sipmba/") {
            continue;
        }
        files += 1;
        let info = file
            .source_code_info
            .as_ref()
            .expect("descriptors keep source info");
        let docs: HashMap<Vec<i32>, bool> = info
            .location
            .iter()
            .map(|l| {
                let documented = l
                    .leading_comments
                    .as_deref()
                    .is_some_and(|c| !c.trim().is_empty());
                (l.path.clone(), documented)
            })
            .collect();
        let mut check = |path: Vec<i32>, what: String| {
            if !docs.get(&path).copied().unwrap_or(false) {
                missing.push(format!("{name}: {what}"));
            }
        };
        for (i, msg) in file.message_type.iter().enumerate() {
            message(&mut check, vec![4, i as i32], msg, "");
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            enumeration(&mut check, vec![5, i as i32], e, "");
        }
        for (i, svc) in file.service.iter().enumerate() {
            let svc_name = svc.name();
            check(vec![6, i as i32], format!("service {svc_name}"));
            for (j, m) in svc.method.iter().enumerate() {
                check(
                    vec![6, i as i32, 2, j as i32],
                    format!("rpc {svc_name}.{}", m.name()),
                );
            }
        }
    }
    assert!(
        files >= 8,
        "expected the eight sipmba.v1 files, found {files}"
    );
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
}

fn message(
    check: &mut impl FnMut(Vec<i32>, String),
    path: Vec<i32>,
    msg: &DescriptorProto,
    outer: &str,
) {
    if msg.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let name = format!("{outer}{}", msg.name());
    check(path.clone(), format!("message {name}"));
    for (i, f) in msg.field.iter().enumerate() {
        check(
            [path.clone(), vec![2, i as i32]].concat(),
            format!("field {name}.{}", f.name()),
        );
    }
    for (i, o) in msg.oneof_decl.iter().enumerate() {
        // Synthetic oneofs of proto3 `optional` fields are not written by hand.
        if o.name().starts_with('_') {
            continue;
        }
        check(
            [path.clone(), vec![8, i as i32]].concat(),
            format!("oneof {name}.{}", o.name()),
        );
    }
    for (i, nested) in msg.nested_type.iter().enumerate() {
        message(
            check,
            [path.clone(), vec![3, i as i32]].concat(),
            nested,
            &format!("{name}."),
        );
    }
    for (i, e) in msg.enum_type.iter().enumerate() {
        enumeration(
            check,
            [path.clone(), vec![4, i as i32]].concat(),
            e,
            &format!("{name}."),
        );
    }
}

fn enumeration(
    check: &mut impl FnMut(Vec<i32>, String),
    path: Vec<i32>,
    e: &EnumDescriptorProto,
    outer: &str,
) {
    let name = format!("{outer}{}", e.name());
    check(path.clone(), format!("enum {name}"));
    for (i, v) in e.value.iter().enumerate() {
        check(
            [path.clone(), vec![2, i as i32]].concat(),
            format!("value {name}.{}", v.name()),
        );
    }
}
