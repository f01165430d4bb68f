"""A minimal trainer whose consumer loop the chaos harness runs as its consumer role."""
