def add_run_parser(sub):
    pass


def add_other_parsers(sub):
    pass
