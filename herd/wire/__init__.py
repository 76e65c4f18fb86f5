"""Every line that crosses a socket, sans I/O: one class per line with its parser and formatter
side by side (`client`, `planning`, `peer`, `operator`), on the field grammar of `grammar`."""
