"""provisioner: number blocks shared across customer accounts, provisioned into Asterisk."""
