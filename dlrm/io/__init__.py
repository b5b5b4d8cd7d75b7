"""Storage: atomic local writes, bounded YAML, s3:// URIs and the S3 client settings."""
