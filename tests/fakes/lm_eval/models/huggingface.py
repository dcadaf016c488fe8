"""The stand-in's HFLM: holds the model it is handed (see ``tests/fakes/lm_eval/__init__.py``)."""


class HFLM:
    def __init__(self, pretrained, tokenizer=None, batch_size=1):
        self.model, self.tokenizer, self.batch_size = pretrained, tokenizer, batch_size
