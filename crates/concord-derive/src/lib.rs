//! `#[derive(Syncable)]`: turns a plain struct into a Concord library model.
//!
//! The derive never interprets field types: it emits `FieldValue` calls and lets
//! the type system pick the storage kind, so any type implementing `FieldValue`
//! works as a field. Errors point at the offending attribute.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

#[proc_macro_derive(Syncable, attributes(sync))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

struct FieldSpec {
    ident: syn::Ident,
    ty: syn::Type,
    id: bool,
    skip: bool,
    owner: bool,
    key: bool,
    references: Option<String>,
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let mut model: Option<String> = None;
    let mut table: Option<String> = None;
    let mut ownership: Option<TokenStream2> = None;
    let mut membership = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("sync")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("model") {
                model = Some(meta.value()?.parse::<LitStr>()?.value());
            } else if meta.path.is_ident("table") {
                table = Some(meta.value()?.parse::<LitStr>()?.value());
            } else if meta.path.is_ident("shared") {
                ownership = Some(quote!(::concord::model::Ownership::Shared));
            } else if meta.path.is_ident("device_owned") {
                ownership = Some(quote!(::concord::model::Ownership::DeviceOwned));
            } else if meta.path.is_ident("membership") {
                membership = true;
            } else {
                return Err(meta.error(
                    "expected one of: model = \"..\", table = \"..\", shared, device_owned, membership",
                ));
            }
            Ok(())
        })?;
    }
    let model = model
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing #[sync(model = \"..\")]"))?;
    let table = table
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing #[sync(table = \"..\")]"))?;
    let ownership = ownership.ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "missing ownership: #[sync(shared)] or #[sync(device_owned)]",
        )
    })?;

    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(n) => &n.named,
            _ => return Err(syn::Error::new_spanned(name, "Syncable needs named fields")),
        },
        _ => {
            return Err(syn::Error::new_spanned(
                name,
                "Syncable can only be derived for structs",
            ))
        }
    };

    let mut specs = Vec::new();
    for f in fields {
        let mut spec = FieldSpec {
            ident: f.ident.clone().expect("named field"),
            ty: f.ty.clone(),
            id: false,
            skip: false,
            owner: false,
            key: false,
            references: None,
        };
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("sync")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    spec.id = true;
                } else if meta.path.is_ident("skip") {
                    spec.skip = true;
                } else if meta.path.is_ident("owner") {
                    spec.owner = true;
                } else if meta.path.is_ident("key") {
                    spec.key = true;
                } else if meta.path.is_ident("references") {
                    spec.references = Some(meta.value()?.parse::<LitStr>()?.value());
                } else {
                    return Err(
                        meta.error("expected one of: id, skip, owner, key, references = \"model\"")
                    );
                }
                Ok(())
            })?;
        }
        if spec.id && (spec.skip || spec.owner || spec.key || spec.references.is_some()) {
            return Err(syn::Error::new_spanned(
                &f.ident,
                "#[sync(id)] takes no other options",
            ));
        }
        if spec.skip && (spec.owner || spec.key || spec.references.is_some()) {
            return Err(syn::Error::new_spanned(
                &f.ident,
                "a #[sync(skip)] field is device-local and cannot be owner, key or reference",
            ));
        }
        specs.push(spec);
    }

    let ids: Vec<_> = specs.iter().filter(|s| s.id).collect();
    if ids.len() != 1 {
        return Err(syn::Error::new_spanned(
            name,
            "exactly one field must be #[sync(id)]",
        ));
    }
    let id_ident = &ids[0].ident;
    let owners = specs.iter().filter(|s| s.owner).count();
    let is_device_owned = ownership.to_string().contains("DeviceOwned");
    if is_device_owned && owners != 1 {
        return Err(syn::Error::new_spanned(
            name,
            "a device_owned model needs exactly one #[sync(owner)] field",
        ));
    }
    if !is_device_owned && owners != 0 {
        return Err(syn::Error::new_spanned(
            name,
            "#[sync(owner)] only belongs on device_owned models",
        ));
    }
    let synced: Vec<&FieldSpec> = specs.iter().filter(|s| !s.id && !s.skip).collect();
    let local: Vec<&FieldSpec> = specs.iter().filter(|s| s.skip).collect();
    if membership && synced.iter().any(|s| !s.key) {
        return Err(syn::Error::new_spanned(
            name,
            "every synced field of a membership must be #[sync(key)]",
        ));
    }

    let def = |s: &FieldSpec, local: bool| {
        let fname = s.ident.to_string();
        let ty = &s.ty;
        let references = match &s.references {
            Some(r) => quote!(Some(#r)),
            None => quote!(None),
        };
        let key = s.key;
        let owner = s.owner;
        quote! {
            ::concord::model::FieldDef {
                name: #fname,
                kind: <#ty as ::concord::model::FieldValue>::KIND,
                nullable: <#ty as ::concord::model::FieldValue>::NULLABLE,
                references: #references,
                key: #key,
                owner: #owner,
                local: #local,
            }
        }
    };
    let synced_defs: Vec<_> = synced.iter().map(|s| def(s, false)).collect();
    let local_defs: Vec<_> = local.iter().map(|s| def(s, true)).collect();

    let mut deps: Vec<String> = Vec::new();
    for s in &synced {
        if let Some(r) = &s.references {
            if *r != model && !deps.contains(r) {
                deps.push(r.clone());
            }
        }
    }
    let kind = if membership {
        quote!(::concord::model::ModelKind::Membership)
    } else {
        quote!(::concord::model::ModelKind::Record)
    };

    let to_values = synced.iter().map(|s| {
        let i = &s.ident;
        quote!(::concord::model::FieldValue::to_value(&self.#i))
    });
    let to_local = local.iter().map(|s| {
        let i = &s.ident;
        quote!(::concord::model::FieldValue::to_value(&self.#i))
    });
    let n_synced = synced.len();
    let from_synced = synced.iter().enumerate().map(|(idx, s)| {
        let i = &s.ident;
        quote!(#i: ::concord::model::FieldValue::from_value(&values[#idx])?)
    });
    let from_local = local.iter().enumerate().map(|(idx, s)| {
        let i = &s.ident;
        quote!(#i: match local.get(#idx) {
            Some(v) => ::concord::model::FieldValue::from_value(v)?,
            None => ::core::default::Default::default(),
        })
    });

    Ok(quote! {
        impl ::concord::model::Syncable for #name {
            const INFO: &'static ::concord::model::ModelInfo = &::concord::model::ModelInfo {
                name: #model,
                table: #table,
                ownership: #ownership,
                kind: #kind,
                fields: &[#(#synced_defs),*],
                local_fields: &[#(#local_defs),*],
                depends_on: &[#(#deps),*],
            };
            fn id(&self) -> ::concord::Uuid {
                self.#id_ident
            }
            fn to_values(&self) -> ::std::vec::Vec<::concord::model::Value> {
                vec![#(#to_values),*]
            }
            fn to_local_values(&self) -> ::std::vec::Vec<::concord::model::Value> {
                vec![#(#to_local),*]
            }
            fn from_values(
                id: ::concord::Uuid,
                values: &[::concord::model::Value],
                local: &[::concord::model::Value],
            ) -> ::core::result::Result<Self, ::concord::model::ModelError> {
                if values.len() != #n_synced {
                    return Err(::concord::model::ModelError::Arity {
                        model: #model,
                        expected: #n_synced,
                        found: values.len(),
                    });
                }
                let _ = local;
                Ok(Self {
                    #id_ident: id,
                    #(#from_synced,)*
                    #(#from_local,)*
                })
            }
        }
    })
}
