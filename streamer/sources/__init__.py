"""Event sources: a Kafka topic (kafka-python) and a JSONL file or folder (the embedded default).

base.py   Record (a raw value with its partition key and position), the Source protocol, FatalSourceError
file.py   FileSource
kafka.py  KafkaSource and its KafkaSettings
"""

from streamer.sources.base import FatalSourceError, Record, Source
from streamer.sources.file import FileSource
from streamer.sources.kafka import KafkaSettings, KafkaSource

__all__ = ["FatalSourceError", "FileSource", "KafkaSettings", "KafkaSource", "Record", "Source"]
