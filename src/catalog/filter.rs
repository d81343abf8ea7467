//! A spec's `filter`: a SQL-style predicate over the table's columns,
//! turned into an Iceberg [`Predicate`] typed by the table schema, so the
//! scan prunes files by partition and column statistics and then applies it
//! row by row.
//!
//! Supported: `= != <> < <= > >=`, `[NOT] IN (...)`, `[NOT] BETWEEN`, `AND`,
//! `OR`, `NOT`, parentheses, `IS [NOT] NULL`, `[NOT] LIKE 'prefix%'`.
//! Literals take the type of the column they are compared with: a date
//! string compared with a timestamp column is a timestamp. Anything else is
//! an error naming the offending piece; nothing is silently dropped.

use crate::error::{Result, bail, err};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{Datum, PrimitiveType, Schema, Type};
use sqlparser::ast::{BinaryOperator, Expr, Spanned, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};

/// How deep `NOT`s and parentheses may nest: the SQL parser's own limit,
/// which keeps every recursion over a filter shallow. Chains of `AND` and
/// `OR` do not nest in this sense and may be of any length.
pub const MAX_NESTING: usize = 50;

/// A filter that could not be parsed or bound: what is wrong and, when it
/// is one piece of the text, where that piece starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .column.map(|c| format!(" (at column {c} of the filter)")).unwrap_or_default())]
pub struct FilterError {
    /// What is wrong.
    pub message: String,
    /// 1-based character column of the offending piece.
    pub column: Option<u64>,
}

/// A parsed filter: checked for syntax when the spec is loaded, bound to a
/// table's schema ([`Filter::bind`]) when the spec is resolved.
#[derive(Debug, Clone)]
pub struct Filter {
    text: String,
    cond: Cond,
}

/// A filter's structure: `AND` and `OR` chains flattened into lists (so a
/// generated filter of 10,000 terms is one level, not 10,000), `NOT`, and
/// leaves, which are single comparisons.
#[derive(Debug, Clone)]
enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf(Box<Expr>),
}

impl Filter {
    /// Parses `sql`.
    pub fn parse(sql: &str) -> Result<Self, FilterError> {
        let dialect = GenericDialect {};
        let expr = Parser::new(&dialect)
            .with_recursion_limit(MAX_NESTING)
            .try_with_sql(sql)
            .and_then(|mut p| {
                let e = p.parse_expr()?;
                p.expect_token(&sqlparser::tokenizer::Token::EOF)?;
                Ok(e)
            })
            .map_err(|e| FilterError {
                message: match e {
                    _ if nesting(sql) >= MAX_NESTING - 10 => format!(
                        "the filter nests NOT or parentheses more than {} levels deep; \
                         simplify it (NOT NOT x is x; AND and OR chains may be any length)",
                        MAX_NESTING - 10
                    ),
                    ParserError::RecursionLimitExceeded => format!(
                        "the filter nests NOT or parentheses more than {MAX_NESTING} levels deep; \
                         simplify it (NOT NOT x is x; AND and OR chains may be any length)"
                    ),
                    e => format!("not a valid predicate: {e}"),
                },
                column: None,
            })?;
        Ok(Self {
            text: sql.to_string(),
            cond: flatten(expr),
        })
    }

    /// The filter as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The Iceberg predicate "the filter is TRUE" over `schema`'s columns.
    pub fn bind(&self, schema: &Schema) -> Result<Predicate, FilterError> {
        bind(&self.cond, schema, false)
    }
}

/// How deeply `sql` nests `NOT`s and parentheses: the most open
/// parentheses plus `NOT`s in force at any token. The parser gives up at
/// its recursion limit, sometimes with a message about the token where it
/// stopped; this finds out whether that is why.
fn nesting(sql: &str) -> usize {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return 0;
    };
    // NOTs in force at each open parenthesis level.
    let mut levels: Vec<usize> = vec![0];
    let mut deepest = 0;
    for t in tokens {
        match t {
            Token::LParen => levels.push(0),
            Token::RParen if levels.len() > 1 => {
                levels.pop();
            }
            Token::Word(w) if w.keyword == Keyword::NOT => {
                if let Some(n) = levels.last_mut() {
                    *n += 1;
                }
            }
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => {
                // A NOT covers one operand; the next operand starts fresh.
                if let Some(n) = levels.last_mut() {
                    *n = 0;
                }
            }
            _ => {}
        }
        deepest = deepest.max(levels.len() - 1 + levels.iter().sum::<usize>());
    }
    deepest
}

/// Parses `sql` and binds it to `schema`'s columns.
pub fn parse(sql: &str, schema: &Schema) -> Result<Predicate> {
    Ok(Filter::parse(sql)?.bind(schema)?)
}

/// `expr` as a [`Cond`]. Consumes the expression: a long chain is taken
/// apart along its spine, iteratively, so neither this nor dropping the
/// parser's tree recurses once per term.
fn flatten(expr: Expr) -> Cond {
    match expr {
        Expr::Nested(inner) => flatten(*inner),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Cond::Not(Box::new(flatten(*expr))),
        Expr::BinaryOp { left, op, right }
            if matches!(op, BinaryOperator::And | BinaryOperator::Or) =>
        {
            let and = op == BinaryOperator::And;
            let mut terms = vec![*right];
            let mut cur = *left;
            loop {
                match cur {
                    Expr::BinaryOp { left, op, right }
                        if op == BinaryOperator::And && and || op == BinaryOperator::Or && !and =>
                    {
                        terms.push(*right);
                        cur = *left;
                    }
                    other => {
                        terms.push(other);
                        break;
                    }
                }
            }
            terms.reverse();
            let mut parts = Vec::with_capacity(terms.len());
            for t in terms {
                match (flatten(t), and) {
                    (Cond::All(inner), true) | (Cond::Any(inner), false) => parts.extend(inner),
                    (c, _) => parts.push(c),
                }
            }
            if and {
                Cond::All(parts)
            } else {
                Cond::Any(parts)
            }
        }
        other => Cond::Leaf(Box::new(other)),
    }
}

/// Predicates combined as a balanced tree (depth log2 n): Iceberg walks
/// predicates recursively, on threads with small stacks.
fn balanced(mut preds: Vec<Predicate>, and: bool) -> Predicate {
    while preds.len() > 1 {
        let mut next = Vec::with_capacity(preds.len().div_ceil(2));
        let mut it = preds.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) if and => a.and(b),
                Some(b) => a.or(b),
                None => a,
            });
        }
        preds = next;
    }
    preds.pop().unwrap_or(Predicate::AlwaysTrue)
}

/// Binds `cond` as the predicate "cond is TRUE" (or, with `negate`, "cond
/// is FALSE") under SQL's three-valued logic: a comparison involving a null
/// is neither, so every comparison leaf carries `IS NOT NULL`, and `NOT` is
/// pushed down by swapping TRUE and FALSE (De Morgan for the chains). The
/// result does not depend on how the scan treats nulls in negated predicates.
fn bind(cond: &Cond, schema: &Schema, negate: bool) -> Result<Predicate, FilterError> {
    match cond {
        Cond::All(terms) | Cond::Any(terms) => {
            let preds = terms
                .iter()
                .map(|t| bind(t, schema, negate))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(balanced(preds, matches!(cond, Cond::All(_)) != negate))
        }
        Cond::Not(inner) => bind(inner, schema, !negate),
        Cond::Leaf(expr) => leaf(expr, schema, negate).map_err(|e| FilterError {
            message: format!("{e:#}"),
            column: Some(expr.span().start.column).filter(|c| *c > 0),
        }),
    }
}

/// One comparison, "is TRUE" or with `negate` "is FALSE".
fn leaf(expr: &Expr, schema: &Schema, negate: bool) -> Result<Predicate> {
    match expr {
        Expr::Nested(inner) => leaf(inner, schema, negate),
        Expr::BinaryOp { left, op, right } => comparison(left, op, right, schema, expr, negate),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
            let r = column(inner, schema)?.0;
            Ok(if matches!(expr, Expr::IsNull(_)) != negate {
                r.is_null()
            } else {
                r.is_not_null()
            })
        }
        Expr::InList {
            expr: inner,
            list,
            negated,
        } => {
            let (r, ty, name) = column(inner, schema)?;
            let values = list
                .iter()
                .map(|v| literal(v, &ty, &name))
                .collect::<Result<Vec<_>>>()?;
            let p = if *negated != negate {
                r.clone().is_not_in(values)
            } else {
                r.clone().is_in(values)
            };
            Ok(r.is_not_null().and(p))
        }
        Expr::Between {
            expr: inner,
            negated,
            low,
            high,
        } => {
            let (r, ty, name) = column(inner, schema)?;
            let (lo, hi) = (literal(low, &ty, &name)?, literal(high, &ty, &name)?);
            let p = if *negated != negate {
                r.clone().less_than(lo).or(r.clone().greater_than(hi))
            } else {
                r.clone()
                    .greater_than_or_equal_to(lo)
                    .and(r.clone().less_than_or_equal_to(hi))
            };
            Ok(r.is_not_null().and(p))
        }
        Expr::Like {
            negated,
            any: false,
            expr: inner,
            pattern,
            escape_char: None,
        } => {
            let (r, ty, name) = column(inner, schema)?;
            if ty != PrimitiveType::String {
                bail!("LIKE needs a string column, `{name}` is {ty}");
            }
            let pat = string_value(pattern)
                .ok_or_else(|| err!("LIKE needs a quoted pattern, got `{pattern}`"))?;
            let prefix = pat.strip_suffix('%').filter(|p| !p.contains(['%', '_']));
            let Some(prefix) = prefix else {
                bail!("LIKE supports only prefix patterns such as 'abc%', got '{pat}'");
            };
            let d = Datum::string(prefix);
            let p = if *negated != negate {
                r.clone().not_starts_with(d)
            } else {
                r.clone().starts_with(d)
            };
            Ok(r.is_not_null().and(p))
        }
        other => bail!(
            "`{other}` is not supported; use comparisons of a column with a literal, IN, BETWEEN, LIKE 'prefix%', IS [NOT] NULL, AND, OR, NOT"
        ),
    }
}

fn comparison(
    left: &Expr,
    op: &BinaryOperator,
    right: &Expr,
    schema: &Schema,
    whole: &Expr,
    negate: bool,
) -> Result<Predicate> {
    // Accept `literal op column` by flipping it to `column op' literal`.
    let (col, lit, op) = if is_column(left) {
        (left, right, op.clone())
    } else if is_column(right) {
        let flipped = match op {
            BinaryOperator::Lt => BinaryOperator::Gt,
            BinaryOperator::LtEq => BinaryOperator::GtEq,
            BinaryOperator::Gt => BinaryOperator::Lt,
            BinaryOperator::GtEq => BinaryOperator::LtEq,
            other => other.clone(),
        };
        (right, left, flipped)
    } else {
        bail!("`{whole}` does not compare a column with a literal");
    };
    let (r, ty, name) = column(col, schema)?;
    if matches!(lit, Expr::Value(v) if v.value == Value::Null) {
        bail!(
            "`{whole}`: comparing with NULL is never true; use `{name} IS NULL` or `IS NOT NULL`"
        );
    }
    let d = literal(lit, &ty, &name)?;
    let op = if negate {
        match op {
            BinaryOperator::Eq => BinaryOperator::NotEq,
            BinaryOperator::NotEq => BinaryOperator::Eq,
            BinaryOperator::Lt => BinaryOperator::GtEq,
            BinaryOperator::LtEq => BinaryOperator::Gt,
            BinaryOperator::Gt => BinaryOperator::LtEq,
            BinaryOperator::GtEq => BinaryOperator::Lt,
            other => other,
        }
    } else {
        op
    };
    let p = match op {
        BinaryOperator::Eq => r.clone().equal_to(d),
        BinaryOperator::NotEq => r.clone().not_equal_to(d),
        BinaryOperator::Lt => r.clone().less_than(d),
        BinaryOperator::LtEq => r.clone().less_than_or_equal_to(d),
        BinaryOperator::Gt => r.clone().greater_than(d),
        BinaryOperator::GtEq => r.clone().greater_than_or_equal_to(d),
        other => bail!("operator `{other}` in `{whole}` is not supported"),
    };
    Ok(r.is_not_null().and(p))
}

fn is_column(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

fn column(e: &Expr, schema: &Schema) -> Result<(Reference, PrimitiveType, String)> {
    let name = match e {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(parts) if parts.len() == 1 => parts[0].value.clone(),
        other => bail!("expected a column name, got `{other}`"),
    };
    let field = schema.field_by_name(&name).ok_or_else(|| {
        let names: Vec<String> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        err!(
            "unknown column `{name}` (the table has: {})",
            names.join(", ")
        )
    })?;
    let Type::Primitive(ty) = field.field_type.as_ref() else {
        bail!("column `{name}` is not a primitive column and cannot be filtered");
    };
    Ok((Reference::new(name.clone()), ty.clone(), name))
}

fn string_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn number_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.to_string()),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => number_value(expr).map(|n| format!("-{n}")),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => number_value(expr),
        _ => None,
    }
}

/// Types a literal by its column.
fn literal(e: &Expr, ty: &PrimitiveType, col: &str) -> Result<Datum> {
    let wrong = |expected: &str| err!("column `{col}` is {ty}: expected {expected}, got `{e}`");
    match ty {
        PrimitiveType::String => string_value(e)
            .map(Datum::string)
            .ok_or_else(|| wrong("a quoted string")),
        PrimitiveType::Long => number_value(e)
            .and_then(|n| n.parse::<i64>().ok())
            .map(Datum::long)
            .ok_or_else(|| wrong("an integer")),
        PrimitiveType::Int => number_value(e)
            .and_then(|n| n.parse::<i32>().ok())
            .map(Datum::int)
            .ok_or_else(|| wrong("an integer")),
        PrimitiveType::Double => number_value(e)
            .and_then(|n| n.parse::<f64>().ok())
            .map(Datum::double)
            .ok_or_else(|| wrong("a number")),
        PrimitiveType::Float => number_value(e)
            .and_then(|n| n.parse::<f32>().ok())
            .map(Datum::float)
            .ok_or_else(|| wrong("a number")),
        PrimitiveType::Boolean => match e {
            Expr::Value(v) if matches!(v.value, Value::Boolean(_)) => match v.value {
                Value::Boolean(b) => Ok(Datum::bool(b)),
                _ => unreachable!("matched above"),
            },
            _ => match string_value(e).map(|s| s.to_ascii_lowercase()).as_deref() {
                Some("true") => Ok(Datum::bool(true)),
                Some("false") => Ok(Datum::bool(false)),
                _ => Err(wrong("TRUE or FALSE")),
            },
        },
        PrimitiveType::Timestamptz | PrimitiveType::Timestamp => {
            let s = string_value(e)
                .ok_or_else(|| wrong("a quoted date or time such as '2024-01-01'"))?;
            let micros = parse_instant(&s).ok_or_else(|| {
                wrong("a date or time such as '2024-01-01', '2024-01-01 12:00:00' or '2024-01-01T12:00:00Z'")
            })?;
            Ok(if *ty == PrimitiveType::Timestamptz {
                Datum::timestamptz_micros(micros)
            } else {
                Datum::timestamp_micros(micros)
            })
        }
        PrimitiveType::Date => {
            let s = string_value(e).ok_or_else(|| wrong("a quoted date such as '2024-01-01'"))?;
            let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|_| wrong("a date such as '2024-01-01'"))?;
            let days = (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days();
            Ok(Datum::date(
                i32::try_from(days).map_err(|_| wrong("a date in range"))?,
            ))
        }
        other => bail!("column `{col}` has type {other}, which filters do not support"),
    }
}

/// Microseconds since the epoch (UTC) for an RFC 3339 time, a naive
/// date-time (taken as UTC) or a date (midnight UTC).
fn parse_instant(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t).timestamp_micros());
        }
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?)
            .timestamp_micros(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        crate::catalog::base_schema().unwrap()
    }

    fn ok(sql: &str) -> String {
        parse(sql, &schema())
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"))
            .to_string()
    }

    fn err(sql: &str) -> String {
        format!("{:#}", parse(sql, &schema()).unwrap_err())
    }

    #[test]
    fn every_operator_binds() {
        for sql in [
            "label = 'cat'",
            "label != 'cat'",
            "label <> 'cat'",
            "size_bytes < 10",
            "size_bytes <= 10",
            "10 < size_bytes",
            "size_bytes >= -3",
            "label IN ('cat', 'dog')",
            "label NOT IN ('cat')",
            "label IS NULL",
            "label IS NOT NULL",
            "label LIKE 'ca%'",
            "label NOT LIKE 'ca%'",
            "NOT (label = 'cat' OR split = 'val')",
            "size_bytes BETWEEN 1 AND 5",
            "ingested_at >= '2024-01-01'",
            "ingested_at < '2024-01-01T10:00:00Z'",
        ] {
            ok(sql);
        }
        assert!(
            ok("10 < size_bytes").contains("size_bytes > 10"),
            "{}",
            ok("10 < size_bytes")
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert!(err("lable = 'cat'").contains("unknown column `lable`"));
        assert!(
            err("size_bytes = 'big'").contains("column `size_bytes` is long: expected an integer")
        );
        assert!(err("ingested_at > 'yesterday'").contains("expected a date or time"));
        assert!(err("label LIKE '%cat'").contains("only prefix patterns"));
        assert!(err("label = NULL").contains("IS NULL"));
        assert!(err("size_bytes + 1 > 3").contains("does not compare a column"));
        assert!(err("label = 'a' extra").contains("not a valid predicate"));
        assert!(err("lower(label) = 'a'").contains("does not compare a column"));
        assert!(err("label").contains("is not supported"));
    }

    #[test]
    fn errors_point_at_the_piece() {
        let e = Filter::parse("split = 'train' AND lable = 'cat'")
            .unwrap()
            .bind(&schema())
            .unwrap_err();
        assert_eq!(e.column, Some(21), "{e}");
        assert!(e.to_string().contains("at column 21"), "{e}");
    }

    #[test]
    fn long_chains_bind_as_shallow_trees() {
        for n in [1, 2, 3, 1000, 10_000] {
            let sql = (0..n)
                .map(|i| format!("label = 'l{i}'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let pred = Filter::parse(&sql).unwrap().bind(&schema()).unwrap();
            // Binding to a schema walks the whole predicate recursively.
            let bound =
                iceberg::expr::Bind::bind(&pred, std::sync::Arc::new(schema()), true).unwrap();
            drop(bound);
            let and = (0..n)
                .map(|i| format!("size_bytes <> {i}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            Filter::parse(&and).unwrap().bind(&schema()).unwrap();
        }
    }

    #[test]
    fn deep_nesting_is_refused_with_a_clear_message() {
        let sql = format!("{}label = 'a'", "NOT ".repeat(5000));
        let e = Filter::parse(&sql).unwrap_err();
        assert!(
            e.message.contains("nests NOT or parentheses more than 40"),
            "{e}"
        );
        let sql = format!("{}label = 'a'{}", "(".repeat(5000), ")".repeat(5000));
        assert!(
            Filter::parse(&sql)
                .unwrap_err()
                .message
                .contains("more than 40")
        );
        // Within the limit, NOT NOT ... is fine.
        let sql = format!("{}label = 'a'", "NOT ".repeat(20));
        ok(&sql);
    }

    fn token() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("label".to_string()),
            Just("size_bytes".to_string()),
            Just("ingested_at".to_string()),
            Just("nope".to_string()),
            Just("'a'".to_string()),
            Just("'2024-01-01'".to_string()),
            Just("3".to_string()),
            Just("-1.5".to_string()),
            Just("NULL".to_string()),
            Just("=".to_string()),
            Just("<>".to_string()),
            Just(">=".to_string()),
            Just("AND".to_string()),
            Just("OR".to_string()),
            Just("NOT".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("IN".to_string()),
            Just("BETWEEN".to_string()),
            Just("LIKE".to_string()),
            Just("IS".to_string()),
            Just(",".to_string()),
            "[a-z'%_]{1,4}",
        ]
    }

    proptest::proptest! {
        /// Any sequence of filter tokens parses and binds to a predicate or
        /// to an error with a message; nothing panics.
        #[test]
        fn generated_filters_never_panic(tokens in proptest::collection::vec(token(), 0..40)) {
            let sql = tokens.join(" ");
            // An error's column, when it names one, is inside the text.
            let len = sql.chars().count() as u64;
            let check = |e: &FilterError| match e.column {
                Some(c) => c >= 1 && c <= len.max(1),
                None => !e.message.trim().is_empty(),
            };
            match Filter::parse(&sql) {
                Ok(f) => match f.bind(&schema()) {
                    Ok(_) => {}
                    Err(e) => proptest::prop_assert!(check(&e), "{sql:?}: {e}"),
                },
                Err(e) => proptest::prop_assert!(check(&e), "{sql:?}: {e}"),
            }
        }
    }

    #[test]
    fn dates_are_midnight_utc() {
        assert_eq!(parse_instant("1970-01-02"), Some(86_400_000_000));
        assert_eq!(
            parse_instant("1970-01-01T00:00:01+01:00"),
            Some(-3_599_000_000)
        );
    }
}
