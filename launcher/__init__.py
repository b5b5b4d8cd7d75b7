"""The dlrm-k8s launcher: typed job config, rendering, validation, submission, data transfer."""
