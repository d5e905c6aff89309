"""Spark types of rasterduck's results, and how each band dtype maps onto them.

Spark SQL has no unsigned integers, so a pixel type without a Spark twin becomes the smallest Spark type
that holds every value of it -- the rule Spark itself uses for Parquet's unsigned columns:

    numpy    Spark (SQL)        values carried as
    uint8    smallint (Short)   int16
    int8     tinyint (Byte)     int8
    uint16   int (Integer)      int32
    int16    smallint (Short)   int16
    uint32   bigint (Long)      int64
    int32    int (Integer)      int32
    uint64   decimal(20,0)      decimal128(20, 0) (exact; no 64-bit unsigned integer exists)
    int64    bigint (Long)      int64
    float32  float (Float)      float32
    float64  double (Double)    float64

The `dtype` field of every result still names the native type. Pure functions, no SparkSession needed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    ByteType,
    DataType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from ..core.kernel import pixel_dtype

# numpy dtype -> (Spark type, NumPy dtype the kernel builds, suffix of the typed variant)
SPARK_PIXEL_TYPES: dict[str, tuple[DataType, str, str]] = {
    "uint8": (ShortType(), "int16", "u8"),
    "int8": (ByteType(), "int8", "i8"),
    "uint16": (IntegerType(), "int32", "u16"),
    "int16": (ShortType(), "int16", "i16"),
    "uint32": (LongType(), "int64", "u32"),
    "int32": (IntegerType(), "int32", "i32"),
    "uint64": (DecimalType(20, 0), "uint64", "u64"),
    "int64": (LongType(), "int64", "i64"),
    "float32": (FloatType(), "float32", "f32"),
    "float64": (DoubleType(), "float64", "f64"),
}

ZONAL_TYPE = StructType([StructField("count", LongType()), StructField("valid_count", LongType()),
                         *[StructField(k, DoubleType()) for k in ("min", "max", "mean", "std", "sum")]])
PIXEL_VALUES_TYPE = ArrayType(DoubleType())


def spark_pixel_type(dtype: str | np.dtype) -> DataType:
    """The Spark type of one pixel of `dtype` (uint16 -> IntegerType, see the module table)."""
    return SPARK_PIXEL_TYPES[pixel_dtype(dtype)][0]


def carrier_dtype(dtype: str | np.dtype) -> str:
    """The NumPy dtype the kernel builds for `dtype` pixels (a safe cast: uint16 -> int32)."""
    return SPARK_PIXEL_TYPES[pixel_dtype(dtype)][1]


def load_bands_type(dtype: str | np.dtype, *, safe: bool = False) -> StructType:
    """STRUCT of load_bands with pixels of `dtype` (safe: plus `error`), the fields of DuckDB's."""
    fields = [
        StructField("bands", ArrayType(StringType())),
        StructField("height", IntegerType()),
        StructField("width", IntegerType()),
        StructField("transform", ArrayType(DoubleType())),
        StructField("crs", StringType()),
        StructField("dtype", StringType()),
        StructField("nodata", DoubleType()),
        StructField("data", ArrayType(ArrayType(spark_pixel_type(dtype)))),
        StructField("valid", ArrayType(BooleanType())),
    ]
    if safe:
        fields.append(StructField("error", StringType()))
    return StructType(fields)


def arrow_type(t: DataType) -> pa.DataType:
    """The Arrow type Spark expects from a UDF returning `t` (the subset our results use)."""
    simple: dict[type, pa.DataType] = {
        ByteType: pa.int8(), ShortType: pa.int16(), IntegerType: pa.int32(), LongType: pa.int64(),
        FloatType: pa.float32(), DoubleType: pa.float64(), StringType: pa.string(), BinaryType: pa.binary(),
        BooleanType: pa.bool_(),
    }
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, DecimalType):
        return pa.decimal128(t.precision, t.scale)
    if isinstance(t, ArrayType):
        return pa.list_(arrow_type(t.elementType))
    if isinstance(t, StructType):
        return pa.struct([pa.field(f.name, arrow_type(f.dataType)) for f in t.fields])
    raise TypeError(f"no Arrow type for Spark type {t}")


def conform(arr: pa.Array, t: DataType) -> pa.Array:
    """`arr` as the Arrow type Spark expects for `t` (a no-op when the kernel built it that way; uint64
    pixels become decimal(20,0), 64-bit list offsets 32-bit)."""
    want = arrow_type(t)
    if arr.type.equals(want):
        return arr
    return arr.cast(want)


__all__ = [
    "PIXEL_VALUES_TYPE",
    "SPARK_PIXEL_TYPES",
    "ZONAL_TYPE",
    "arrow_type",
    "carrier_dtype",
    "conform",
    "load_bands_type",
    "spark_pixel_type",
]
