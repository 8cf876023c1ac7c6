# Third session, call 3 (carry .carry/c2): the second GGUF piece.
cp .carry/c2/gB /tmp/parts/
