//! `#[derive(Syncable)]`: turns a plain struct into a Concord library model.
//!
//! The derive never interprets field types: it emits `FieldValue` calls and lets
//! the type system pick the storage kind, so any type implementing `FieldValue`
//! works as a field. Errors point at the offending attribute.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

/// Derive `concord::model::Syncable`, so that the model is described once (its
/// `#[sync(...)]` attributes) and the store and merge code work on that
/// description instead of code written per model.
#[proc_macro_derive(Syncable, attributes(sync))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// One field's `#[sync(...)]` options.
struct FieldSpec {
    ident: syn::Ident,
    ty: syn::Type,
    id: bool,
    skip: bool,
    owner: bool,
    key: bool,
    references: Option<String>,
}

/// The struct-level `#[sync(...)]` options.
struct ModelSpec {
    model: String,
    table: String,
    ownership: TokenStream2,
    membership: bool,
}

/// Parse the struct-level `#[sync(...)]` attributes; each required one missing
/// is an error at the derive.
fn parse_model(input: &DeriveInput) -> syn::Result<ModelSpec> {
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
    Ok(ModelSpec {
        model,
        table,
        ownership,
        membership,
    })
}

/// Parse one field's `#[sync(...)]` attributes and reject combinations that
/// mean nothing.
fn parse_field(f: &syn::Field) -> syn::Result<FieldSpec> {
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
    Ok(spec)
}

/// The named fields of the deriving struct.
fn named_fields(
    input: &DeriveInput,
) -> syn::Result<&syn::punctuated::Punctuated<syn::Field, syn::token::Comma>> {
    let name = &input.ident;
    match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(n) => Ok(&n.named),
            _ => Err(syn::Error::new_spanned(name, "Syncable needs named fields")),
        },
        _ => Err(syn::Error::new_spanned(
            name,
            "Syncable can only be derived for structs",
        )),
    }
}

/// Check the rules that involve several fields: one id, one owner exactly when
/// device-owned, memberships made of keys only.
fn check_fields(name: &syn::Ident, spec: &ModelSpec, fields: &[FieldSpec]) -> syn::Result<()> {
    if fields.iter().filter(|s| s.id).count() != 1 {
        return Err(syn::Error::new_spanned(
            name,
            "exactly one field must be #[sync(id)]",
        ));
    }
    let owners = fields.iter().filter(|s| s.owner).count();
    let is_device_owned = spec.ownership.to_string().contains("DeviceOwned");
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
    if spec.membership && fields.iter().any(|s| !s.id && !s.skip && !s.key) {
        return Err(syn::Error::new_spanned(
            name,
            "every synced field of a membership must be #[sync(key)]",
        ));
    }
    Ok(())
}

/// The `FieldDef` describing one field.
fn field_def(s: &FieldSpec, local: bool) -> TokenStream2 {
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
}

/// The `ModelInfo` of the model: its name, table, ownership, fields and the
/// models its fields reference.
fn model_info(spec: &ModelSpec, synced: &[&FieldSpec], local: &[&FieldSpec]) -> TokenStream2 {
    let synced_defs: Vec<_> = synced.iter().map(|s| field_def(s, false)).collect();
    let local_defs: Vec<_> = local.iter().map(|s| field_def(s, true)).collect();
    let mut deps: Vec<String> = Vec::new();
    for s in synced {
        if let Some(r) = &s.references {
            if *r != spec.model && !deps.contains(r) {
                deps.push(r.clone());
            }
        }
    }
    let kind = if spec.membership {
        quote!(::concord::model::ModelKind::Membership)
    } else {
        quote!(::concord::model::ModelKind::Record)
    };
    let (model, table, ownership) = (&spec.model, &spec.table, &spec.ownership);
    quote! {
        &::concord::model::ModelInfo {
            name: #model,
            table: #table,
            ownership: #ownership,
            kind: #kind,
            fields: &[#(#synced_defs),*],
            local_fields: &[#(#local_defs),*],
            depends_on: &[#(#deps),*],
        }
    }
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let spec = parse_model(&input)?;
    let specs = named_fields(&input)?
        .iter()
        .map(parse_field)
        .collect::<syn::Result<Vec<_>>>()?;
    check_fields(name, &spec, &specs)?;
    let id_ident = &specs
        .iter()
        .find(|s| s.id)
        .ok_or_else(|| syn::Error::new_spanned(name, "exactly one field must be #[sync(id)]"))?
        .ident;
    let synced: Vec<&FieldSpec> = specs.iter().filter(|s| !s.id && !s.skip).collect();
    let local: Vec<&FieldSpec> = specs.iter().filter(|s| s.skip).collect();
    let info = model_info(&spec, &synced, &local);
    let model = &spec.model;

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
            const INFO: &'static ::concord::model::ModelInfo = #info;
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
