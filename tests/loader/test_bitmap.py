import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamtrain.loader.bitmap import Bitmap


@given(st.lists(st.booleans(), max_size=70), st.lists(st.integers(0, 69), max_size=20))
def test_a_bitmap_is_the_set_of_its_mask(mask, ids):
    mask = np.array(mask, dtype=bool)
    bitmap = Bitmap.of_mask(mask)
    assert np.array_equal(Bitmap.from_text(bitmap.to_text(), len(mask)).mask(), mask)
    assert bitmap.count() == mask.sum() and bitmap.missing(3) == ((~mask).sum(), np.flatnonzero(~mask)[:3].tolist())
    ids = np.array([i for i in ids if i < len(mask)], dtype=np.int64)
    repeated = bitmap.add(ids)
    expected = {i for i in ids.tolist() if mask[i] or ids.tolist().count(i) > 1}
    assert set(repeated.tolist()) == expected and bitmap.has(ids).all()


def test_a_bitmap_of_another_size_is_refused():
    with pytest.raises(ValueError, match="cannot hold 9 bits"):
        Bitmap.from_text(Bitmap(8).to_text(), 9)
