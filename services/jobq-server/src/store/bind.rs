//! A row struct's fields as bound values, straight from its `Serialize`
//! (no JSON in between): each field must be the column at its position,
//! and a `None` becomes a NULL of that column's type.

use std::fmt;

use sea_orm::Value;
use serde::Serialize;
use serde::ser::{self, Impossible};

use super::sql::Type;

/// The fields of `row`, in order, as values of `columns`.
pub fn row_values<T: Serialize>(row: &T, columns: &[(&str, Type)]) -> Result<Vec<Value>, String> {
    let mut record = Record {
        columns,
        values: Vec::with_capacity(columns.len()),
    };
    row.serialize(&mut record).map_err(|error| error.0)?;
    if record.values.len() != columns.len() {
        return Err(format!(
            "a row has {} fields for {} columns",
            record.values.len(),
            columns.len()
        ));
    }
    Ok(record.values)
}

#[derive(Debug)]
pub struct BindError(String);

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

impl ser::Error for BindError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        BindError(message.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, BindError> {
    Err(BindError(format!("a row field cannot be {what}")))
}

struct Record<'c> {
    columns: &'c [(&'c str, Type)],
    values: Vec<Value>,
}

impl ser::SerializeStruct for &mut Record<'_> {
    type Ok = ();
    type Error = BindError;

    fn serialize_field<V: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), BindError> {
        let position = self.values.len();
        let Some((name, kind)) = self.columns.get(position) else {
            return Err(BindError(format!("field {key} has no column")));
        };
        if *name != key {
            return Err(BindError(format!(
                "field {key} is where column {name} is expected"
            )));
        }
        self.values.push(value.serialize(Field { kind: *kind })?);
        Ok(())
    }

    fn end(self) -> Result<(), BindError> {
        Ok(())
    }
}

/// Rows are structs; nothing else is one.
macro_rules! only_structs {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, BindError> {
            unsupported("a row")
        })*
    };
}

impl<'a, 'c> ser::Serializer for &'a mut Record<'c> {
    type Ok = ();
    type Error = BindError;
    type SerializeSeq = Impossible<(), BindError>;
    type SerializeTuple = Impossible<(), BindError>;
    type SerializeTupleStruct = Impossible<(), BindError>;
    type SerializeTupleVariant = Impossible<(), BindError>;
    type SerializeMap = Impossible<(), BindError>;
    type SerializeStruct = &'a mut Record<'c>;
    type SerializeStructVariant = Impossible<(), BindError>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, BindError> {
        Ok(self)
    }

    only_structs! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<V: ?Sized + Serialize>(self, _: &V) -> Result<(), BindError> {
        unsupported("a row")
    }

    fn serialize_newtype_struct<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &V,
    ) -> Result<(), BindError> {
        unsupported("a row")
    }

    fn serialize_newtype_variant<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &V,
    ) -> Result<(), BindError> {
        unsupported("a row")
    }
}

/// One field, as a value of its column's type.
struct Field {
    kind: Type,
}

impl Field {
    fn integer(self, n: i64) -> Result<Value, BindError> {
        match self.kind {
            Type::Int => i32::try_from(n)
                .map(|n| Value::Int(Some(n)))
                .map_err(|_| BindError(format!("{n} is not a 32-bit integer"))),
            Type::BigInt => Ok(Value::BigInt(Some(n))),
            other => Err(BindError(format!("an integer for a {other:?} column"))),
        }
    }
}

/// Fields are scalars or options of them.
macro_rules! only_scalars {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ok, BindError> {
            unsupported(stringify!($method))
        })*
    };
}

impl ser::Serializer for Field {
    type Ok = Value;
    type Error = BindError;
    type SerializeSeq = Impossible<Value, BindError>;
    type SerializeTuple = Impossible<Value, BindError>;
    type SerializeTupleStruct = Impossible<Value, BindError>;
    type SerializeTupleVariant = Impossible<Value, BindError>;
    type SerializeMap = Impossible<Value, BindError>;
    type SerializeStruct = Impossible<Value, BindError>;
    type SerializeStructVariant = Impossible<Value, BindError>;

    fn serialize_bool(self, flag: bool) -> Result<Value, BindError> {
        match self.kind {
            Type::Bool => Ok(Value::Bool(Some(flag))),
            other => Err(BindError(format!("a boolean for a {other:?} column"))),
        }
    }

    fn serialize_i8(self, n: i8) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_i16(self, n: i16) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_i32(self, n: i32) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_i64(self, n: i64) -> Result<Value, BindError> {
        self.integer(n)
    }

    fn serialize_u8(self, n: u8) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_u16(self, n: u16) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_u32(self, n: u32) -> Result<Value, BindError> {
        self.integer(i64::from(n))
    }

    fn serialize_u64(self, n: u64) -> Result<Value, BindError> {
        let n = i64::try_from(n).map_err(|_| BindError(format!("{n} is too large")))?;
        self.integer(n)
    }

    fn serialize_str(self, text: &str) -> Result<Value, BindError> {
        match self.kind {
            Type::Text => Ok(Value::String(Some(text.to_owned()))),
            other => Err(BindError(format!("text for a {other:?} column"))),
        }
    }

    fn serialize_none(self) -> Result<Value, BindError> {
        Ok(match self.kind {
            Type::Text => Value::String(None),
            Type::Int => Value::Int(None),
            Type::BigInt => Value::BigInt(None),
            Type::Bool => Value::Bool(None),
        })
    }

    fn serialize_some<V: ?Sized + Serialize>(self, value: &V) -> Result<Value, BindError> {
        value.serialize(self)
    }

    only_scalars! {
        serialize_f32(f32) -> Value;
        serialize_f64(f64) -> Value;
        serialize_char(char) -> Value;
        serialize_bytes(&[u8]) -> Value;
        serialize_unit() -> Value;
        serialize_unit_struct(&'static str) -> Value;
        serialize_unit_variant(&'static str, u32, &'static str) -> Value;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_newtype_struct<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &V,
    ) -> Result<Value, BindError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &V,
    ) -> Result<Value, BindError> {
        unsupported("an enum")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample<'a> {
        id: &'a str,
        count: i32,
        at: Option<i64>,
        flag: bool,
        note: Option<&'a str>,
    }

    const SAMPLE: &[(&str, Type)] = &[
        ("id", Type::Text),
        ("count", Type::Int),
        ("at", Type::BigInt),
        ("flag", Type::Bool),
        ("note", Type::Text),
    ];

    #[test]
    fn fields_become_values_of_their_columns_types() {
        let row = Sample {
            id: "a",
            count: 3,
            at: None,
            flag: true,
            note: Some("n"),
        };
        assert_eq!(
            row_values(&row, SAMPLE),
            Ok(vec![
                Value::String(Some("a".into())),
                Value::Int(Some(3)),
                Value::BigInt(None),
                Value::Bool(Some(true)),
                Value::String(Some("n".into())),
            ])
        );
    }

    #[test]
    fn a_field_out_of_place_is_an_error() {
        let row = Sample {
            id: "a",
            count: 3,
            at: Some(1),
            flag: false,
            note: None,
        };
        let mut swapped = SAMPLE.to_vec();
        swapped.swap(1, 2);
        assert!(row_values(&row, &swapped).is_err());
        assert!(row_values(&row, &SAMPLE[..4]).is_err());
    }
}
