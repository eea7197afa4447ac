"""Steps 3 to 7 in one place, under every face.

gateway    the ``Gateway`` type: the parts of one running gateway, passed explicitly
admission  ``admit``: decide, pin, approval, limits, one decision record and metrics
enforce    after ``decide``: the pin check, and rate limits for what may go ahead
"""
