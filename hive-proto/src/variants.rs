//! The variant names of a serde enum, as its `Deserialize` derive knows
//! them: [`variant_names`] hands the type a deserializer that only records
//! the list serde passes to `deserialize_enum`, so the answer cannot drift
//! from the type. Tests use it to compare verb sets across sockets (the
//! gateway's calls against [`crate::operator::WebRequest`]).
//!
//! This module must never decode real input: its deserializer refuses
//! everything.

use serde::de::{self, Deserialize, Visitor};

/// The variant names of the enum `T`, in declaration order; `None` if `T`
/// does not deserialize as an enum.
pub fn variant_names<'de, T: Deserialize<'de>>() -> Option<&'static [&'static str]> {
    let mut names = Names(None);
    let _ = T::deserialize(&mut names);
    names.0
}

struct Names(Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for &mut Names {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(variants);
        Err(de::Error::custom("only the names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_enums_and_a_struct_has_none() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        enum E {
            A,
            B(u8),
            C { x: u8 },
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            x: u8,
        }
        assert_eq!(variant_names::<E>(), Some(&["A", "B", "C"][..]));
        assert_eq!(variant_names::<S>(), None);
    }
}
