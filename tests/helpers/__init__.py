"""Code shared by the tests: data set files (files), tiny in-memory training (tiny), made-up
run directories (run_dirs). Test files import from here, never from each other."""
