"""Word lists behind the built-in offline few-shot tasks (small, hand-written, no download).

Each entry maps a label word to its inputs. The tasks are chosen so that the answer is either
something SmolLM2 knows (sentiment, continents, parity, categories) or something it can only learn
from the demonstrations (``unnatural``: the same categories named by arbitrary words).
"""

from __future__ import annotations

ANIMALS = ("dog cat horse cow sheep goat pig lion tiger bear wolf fox rabbit mouse deer zebra giraffe elephant "
           "monkey camel donkey squirrel otter beaver kangaroo leopard cheetah hamster moose buffalo").split()
FRUITS = ("apple banana cherry grape lemon mango orange peach pear plum melon kiwi lime papaya apricot "
          "coconut fig pineapple strawberry raspberry blueberry watermelon grapefruit nectarine guava date "
          "pomegranate tangerine blackberry cranberry").split()
VEHICLES = ("car bus truck bicycle motorcycle train tram taxi van tractor scooter airplane helicopter boat ship "
            "yacht canoe submarine jeep ambulance limousine minivan trolley ferry sailboat rocket glider "
            "bulldozer forklift wagon").split()

POSITIVE = ("wonderful excellent delightful fantastic great lovely brilliant superb amazing charming joyful "
            "pleasant marvelous terrific beautiful happy cheerful splendid outstanding glorious heartwarming "
            "enjoyable uplifting magnificent perfect fabulous inspiring gorgeous graceful elegant").split()
NEGATIVE = ("terrible awful horrible dreadful boring disgusting miserable painful ugly nasty lousy pathetic "
            "annoying depressing dull tedious gloomy hideous atrocious unpleasant disappointing mediocre "
            "tragic frustrating sickening worthless appalling grim bleak dismal").split()

EUROPE = ("France Germany Italy Spain Portugal Poland Sweden Norway Finland Denmark Ireland Greece Austria "
          "Belgium Netherlands Switzerland Hungary Romania Ukraine Croatia").split()
ASIA = ("China Japan India Thailand Vietnam Indonesia Malaysia Pakistan Bangladesh Nepal Mongolia Korea "
        "Philippines Cambodia Laos Iran Iraq Afghanistan Kazakhstan Uzbekistan").split()
AFRICA = ("Nigeria Kenya Egypt Ethiopia Ghana Morocco Algeria Tunisia Uganda Tanzania Senegal Mali Zambia "
          "Zimbabwe Angola Sudan Cameroon Namibia Botswana Somalia").split()

NUMBERS = [str(n) for n in range(10, 90)]
